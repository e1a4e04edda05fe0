"""The dashboard's monitoring panel, rendered from a monitoring report."""

from __future__ import annotations

from typing import Any

from medai.serving.i18n import Translator
from medai.serving.monitoring_panel import render_monitoring_panel


def _group(status: str, predictions: int, drifting: tuple[str, ...] = ()) -> dict[str, Any]:
    features = [
        {"feature": name, "kind": "input", "samples": predictions, "psi": 1.0, "p_value": 0.0,
         "status": "drift"}
        for name in drifting
    ]  # fmt: skip
    return {"status": status, "predictions": predictions, "features": features}


def _report(**update: Any) -> dict[str, Any]:
    return {
        "model": "chest-xray-triage",
        "version": "4",
        "status": "drift",
        "baseline": True,
        "baseline_problem": None,
        "overall": _group("drift", 60, ("manufacturer",)),
        "sites": {
            "ward<b>": _group("ok", 30),
            "edge-d": _group("drift", 30, ("manufacturer", "modality")),
        },
        "feedback": {"effusion": {"agree": 3, "disagree": 1, "agreement": 0.75}},
    } | update


def test_the_panel_shows_each_window_and_the_agreement() -> None:
    html = render_monitoring_panel(Translator("en"), _report())
    assert (
        'data-kpi="monitoring_status">chest-xray-triage version 4: <span data-status="drift"'
        in (html)
    )
    assert '<tr data-site="edge-d"><td>edge-d</td><td><span data-status="drift"' in html
    assert "manufacturer, modality" in html
    assert "ward&lt;b&gt;" in html and "ward<b>" not in html  # key names are escaped
    assert '<tr data-finding="effusion">' in html and 'data-value="0.7500"' in html
    assert 'data-kpi="baseline"' not in html


def test_no_baseline_and_no_feedback_are_said_in_the_language() -> None:
    report = _report(
        status="unknown", baseline=False, overall=_group("unknown", 3), sites={}, feedback={}
    )
    english = render_monitoring_panel(Translator("en"), report)
    assert "No baseline" in english and "No clinician feedback yet." in english
    assert '<span data-status="unknown"' in english
    vietnamese = render_monitoring_panel(Translator("vi"), report)
    assert "Không có mốc so sánh" in vietnamese and "chưa rõ" in vietnamese
