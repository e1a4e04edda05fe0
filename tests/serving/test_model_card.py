"""The served model card: its metrics section rendered from a version's run, in its place."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from medai.serving.inference.card import (
    METRICS_BEGIN,
    METRICS_END,
    CardFacts,
    EvaluationRow,
    fill_card,
    read_evaluation,
    render_metrics,
)

CARD = Path(__file__).resolve().parents[2] / "models" / "chest-xray-triage" / "MODEL_CARD.md"
NAN = math.nan


def _row(label: str, site: str, auroc: float, low: float, high: float) -> EvaluationRow:
    return EvaluationRow(label, site, 40, 11, auroc, low, high, 0.41, 0.82, 0.77, 0.052)


def _facts(**change: object) -> CardFacts:
    facts = CardFacts(
        name="chest-xray-triage",
        version="7",
        alias="champion",
        run_id="0123abcd",
        trained_at=dt.datetime(2026, 10, 3, 9, 30, tzinfo=dt.UTC),
        snapshot="chest-v2",
        snapshot_hash="9f86d081884c7d65",
        test_instances="120",
        confidence=0.95,
        gate=0.75,
        labels=("nodule", "effusion"),
        rows=(
            _row("effusion", "all", 0.934, 0.881, 0.972),
            _row("nodule", "all", 0.812, 0.744, 0.869),
            _row("nodule", "site-a", 0.801, 0.702, 0.880),
        ),
    )
    return CardFacts(**(vars(facts) | change))


def test_the_section_states_the_runs_numbers_per_finding_and_site() -> None:
    section = render_metrics(_facts())
    lines = section.splitlines()
    pooled = [line for line in lines if line.startswith("| nodule") or line.startswith("| eff")]
    # The configured order of the findings, whatever the table's.
    assert pooled == [
        "| nodule | 40 | 11 | 0.812 | 0.744 – 0.869 | 0.410 | 0.820 | 0.770 | 0.052 |",
        "| effusion | 40 | 11 | 0.934 | 0.881 – 0.972 | 0.410 | 0.820 | 0.770 | 0.052 |",
    ]
    assert "| site-a | nodule | 40 | 11 | 0.801 | 0.702 – 0.880 |" in section
    for fact in ("version 7", "`@champion`", "0123abcd", "`chest-v2`", "9f86d081884c7d65", "120"):
        assert fact in section
    assert "2026-10-03" in section
    # nodule's lower bound 0.744 is under the 0.75 gate.
    assert "**not passed** for nodule." in section


def test_the_gate_verdict_an_override_and_missing_values() -> None:
    passing = _facts(gate=0.70)
    assert "0.70 for every finding: passed." in render_metrics(passing)
    override = _facts(gate_override='{"configured": 0.75, "used": 0.7, "by": "user:ana"}')
    assert "gate override: threshold 0.70, by user:ana" in render_metrics(override)
    one_class = _facts(rows=(_row("nodule", "all", NAN, NAN, NAN),))
    section = render_metrics(one_class)
    assert "| nodule | 40 | 11 | n/a | n/a |" in section
    # effusion has no row at all: it cannot pass either.
    assert "**not passed** for nodule, effusion." in section
    no_table = render_metrics(_facts(rows=()))
    assert "logged no evaluation table (evaluation/test.csv)" in no_table
    assert "| finding |" not in no_table


def test_the_projects_card_gets_the_section_in_place_of_its_placeholder() -> None:
    text = CARD.read_text(encoding="utf-8")
    assert text.count(METRICS_BEGIN) == 1 and text.count(METRICS_END) == 1
    section = render_metrics(_facts())
    filled = fill_card(text, section)
    before, _, rest = text.partition(METRICS_BEGIN)
    _, _, after = rest.partition(METRICS_END)
    assert filled == f"{before}{METRICS_BEGIN}\n{section}{METRICS_END}{after}"
    assert "This file holds no numbers" not in filled  # the placeholder is gone
    assert filled.index("### Metrics of the served version") < filled.index("| nodule | 40")
    assert filled.index("| nodule | 40") < filled.index("## Limitations")


def test_a_card_without_markers_gets_the_section_at_its_end() -> None:
    filled = fill_card("# Model card: x\n\nA test model.\n", "the section\n")
    assert filled == "# Model card: x\n\nA test model.\n\n## Metrics of the served version\n\n" + (
        "the section\n"
    )


def test_the_evaluation_table_of_training_is_read_as_written(tmp_path: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(
        [
            {"label": "nodule", "site": "all", "n": 30, "n_positive": 9, "auroc": 0.91,
             "auroc_low": 0.85, "auroc_high": 0.96, "threshold": 0.4, "sensitivity": 0.8,
             "specificity": 0.9, "ece": 0.03},
            {"label": "nodule", "site": "site-b", "n": 10, "n_positive": 0, "auroc": NAN,
             "auroc_low": NAN, "auroc_high": NAN, "threshold": 0.4, "sensitivity": NAN,
             "specificity": 1.0, "ece": 0.1},
        ]
    )  # fmt: skip
    path = tmp_path / "test.csv"
    table.to_csv(path, index=False)  # as medai.training.tracking writes it
    pooled, site = read_evaluation(path)
    assert pooled == EvaluationRow("nodule", "all", 30, 9, 0.91, 0.85, 0.96, 0.4, 0.8, 0.9, 0.03)
    assert (site.site, site.n, site.positives, site.specificity) == ("site-b", 10, 0, 1.0)
    assert math.isnan(site.auroc) and math.isnan(site.sensitivity)
