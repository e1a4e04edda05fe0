"""Label sheets: matching through the pseudonyms, kept rows, conflicts, bad sheets, no PHI, CLI."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import AuditRecord, Base, LabelImport, LabelRow, Study, StudyLabel
from medai.cli import app
from medai.collection.campaign.definition import CampaignDefinition, load_campaign
from medai.collection.labels import (
    RematchResult,
    findings_by_site,
    import_label_sheet,
    label_status,
    read_label_sheet,
    rematch_labels,
)
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.collection.pseudonymize import Pseudonymizer, load_key
from medai.config import Settings
from medai.dicom.synth import SynthResult, SynthStudy, generate
from medai.errors import CampaignError, LabelSheetError, UnknownSite
from tests.utils.campaign import EXAMPLE_CAMPAIGN, init_example_campaign

FINDINGS = ("nodule", "effusion", "cardiomegaly")
PHI_COLUMNS = (
    "accession_number",
    "study_instance_uid",
    "patient_id",
    "patient_name",
    "reading_radiologist",
    "report_text",
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    out = tmp_path_factory.mktemp("synth")
    # Seed 1: two or three chest studies per site, seven patients.
    return generate(out, studies=9, seed=1, image_size=48, ct_slices=2)


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    """A reading session on the example campaign's catalog: call :func:`_fresh` before use.

    Its transactions are DEFERRED on SQLite, so an open one never holds the write lock the
    imports under test need.
    """
    init_example_campaign(settings)
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        yield session
    engine.dispose()


def _fresh(session: Session) -> Session:
    """End the session's transaction, so its next query sees what others committed."""
    session.rollback()
    return session


@contextmanager
def _writing(settings: Settings) -> Iterator[Session]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def _catalogue(settings: Settings, synth: SynthResult, *sites: str) -> None:
    IngestPipeline.from_settings(settings).ingest_many(
        [
            Offer(path.read_bytes(), record.site, "folder")
            for record in synth.study_records
            if record.site in sites
            for path in record.files
        ]
    )


def _pseudonymizer(settings: Settings) -> Pseudonymizer:
    return Pseudonymizer(load_key(settings.resolved_key_file))


def _sheet(synth: SynthResult, site: str) -> list[dict[str, str]]:
    with synth.label_sheets[site].open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _chest(synth: SynthResult, site: str) -> list[SynthStudy]:
    return [r for r in synth.study_records if r.site == site and r.modality != "CT"]


def _labels(session: Session) -> dict[tuple[str, str], tuple[int, bool]]:
    """``(pseudonymized study UID, finding) -> (value, conflict)`` of every label."""
    rows = _fresh(session).execute(
        select(Study.study_uid, StudyLabel.finding, StudyLabel.value, StudyLabel.conflict).join(
            Study, Study.id == StudyLabel.study_id
        )
    )
    return {(uid, finding): (value, conflict) for uid, finding, value, conflict in rows}


def _truth(
    pseudo: Pseudonymizer, records: list[SynthStudy]
) -> dict[tuple[str, str], tuple[int, bool]]:
    return {
        (pseudo.uid(r.study_instance_uid), finding): (int(getattr(r, finding)), False)
        for r in records
        for finding in FINDINGS
    }


def _rematch(settings: Settings) -> RematchResult:
    with _writing(settings) as session:
        return rematch_labels(session)


# -- matching -------------------------------------------------------------------------------


def test_rows_match_by_accession_number_and_by_study_uid(
    settings: Settings, session: Session, synth: SynthResult
) -> None:
    _catalogue(settings, synth, "site-a", "site-b")
    pseudo = _pseudonymizer(settings)

    # site-a's mapping keys rows by accession number; site-b's override by study UID.
    by_accession = import_label_sheet(synth.label_sheets["site-a"], "site-a", actor="tester")
    by_uid = import_label_sheet(synth.label_sheets["site-b"], "site-b", actor="tester")

    for result, site in ((by_accession, "site-a"), (by_uid, "site-b")):
        rows = len(_chest(synth, site))
        assert (result.rows, result.counts.matched, result.counts.total) == (rows, rows, rows)
        assert result.rejected == [] and result.labels_added == 3 * rows
    records = _chest(synth, "site-a") + _chest(synth, "site-b")
    assert _labels(session) == _truth(pseudo, records)
    refs = dict(_fresh(session).execute(select(LabelRow.ref, LabelRow.ref_kind)).all())
    for record in _chest(synth, "site-a"):
        assert refs[pseudo.accession_key("site-a", record.accession_number)] == "accession"
    for record in _chest(synth, "site-b"):
        assert refs[pseudo.uid(record.study_instance_uid)] == "study_uid"
    expected: dict[str, dict[str, int]] = {}
    for record in records:
        for finding in FINDINGS:
            if getattr(record, finding):
                site_counts = expected.setdefault(record.site, {})
                site_counts[finding] = site_counts.get(finding, 0) + 1
    assert findings_by_site(session) == expected
    audit = (
        _fresh(session)
        .scalars(
            select(AuditRecord)
            .where(AuditRecord.action == "labels.import")
            .order_by(AuditRecord.seq)
        )
        .all()
    )
    assert [(a.actor, a.subject, a.details["site"]) for a in audit] == [
        ("tester", by_accession.sheet_sha256, "site-a"),
        ("tester", by_uid.sheet_sha256, "site-b"),
    ]
    assert audit[0].details["matched"] == by_accession.counts.matched
    assert audit[0].details["sheet_sha256"] == by_accession.sheet_sha256


def test_same_accession_number_at_another_site_does_not_match(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    _catalogue(settings, synth, "site-a")
    # site-a's rows handed in as if they were site-c's: accession numbers are per hospital.
    sheet = _write(tmp_path / "site-c.csv", _sheet(synth, "site-a"))

    result = import_label_sheet(sheet, "site-c")

    assert result.counts.unmatched == result.rows == len(_chest(synth, "site-a"))
    assert _labels(session) == {}
    assert _rematch(settings).rows == 0


def test_unmatched_rows_match_once_the_images_arrive(
    settings: Settings, session: Session, synth: SynthResult
) -> None:
    pseudo = _pseudonymizer(settings)
    result = import_label_sheet(synth.label_sheets["site-a"], "site-a")
    assert result.counts.unmatched == result.rows > 0
    assert _labels(session) == {}
    audit_before = _fresh(session).scalar(select(func.count()).select_from(AuditRecord))

    # Nothing has arrived: one query, nothing written.
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    with _writing(settings) as writer:
        bind = writer.get_bind()
        event.listen(bind, "before_cursor_execute", record)
        nothing = rematch_labels(writer)
        event.remove(bind, "before_cursor_execute", record)
    assert nothing.rows == 0
    assert [s.split()[0].upper() for s in statements if not s.upper().startswith("BEGIN")] == [
        "SELECT"
    ]
    assert _fresh(session).scalar(select(func.count()).select_from(AuditRecord)) == audit_before

    _catalogue(settings, synth, "site-a", "site-b")
    matched = _rematch(settings)

    assert matched.rows == result.rows and matched.by_site["site-a"].matched == result.rows
    assert matched.labels_added == 3 * result.rows
    assert _labels(session) == _truth(pseudo, _chest(synth, "site-a"))
    statuses = _fresh(session).scalars(select(LabelRow.status)).all()
    assert set(statuses) == {"matched"}
    assert (
        _fresh(session).scalar(
            select(func.count())
            .select_from(AuditRecord)
            .where(AuditRecord.action == "labels.rematch")
        )
        == 1
    )
    assert _rematch(settings).rows == 0  # nothing left to match


# -- conflicts, duplicates, patient check --------------------------------------------------


def test_conflicts_are_flagged_not_overwritten_and_repeats_are_duplicates(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    _catalogue(settings, synth, "site-a")
    pseudo = _pseudonymizer(settings)
    first = import_label_sheet(synth.label_sheets["site-a"], "site-a")
    assert first.counts.matched == first.rows
    truth = _truth(pseudo, _chest(synth, "site-a"))

    rows = _sheet(synth, "site-a")
    flipped = dict(rows[0], nodule=str(1 - int(rows[0]["nodule"])))
    second_sheet = _write(tmp_path / "again.csv", [flipped, *rows[1:], rows[1]])
    second = import_label_sheet(second_sheet, "site-a")

    assert (second.counts.conflict, second.counts.duplicate) == (1, len(rows))
    assert (second.counts.matched, second.labels_added, second.conflicts_flagged) == (0, 0, 1)
    study_uid = pseudo.uid(rows[0]["study_instance_uid"])
    labels = _labels(session)
    kept = int(rows[0]["nodule"])
    assert labels[(study_uid, "nodule")] == (kept, True)  # the first value is kept, flagged
    assert {k: v[0] for k, v in labels.items()} == {k: v[0] for k, v in truth.items()}
    status = label_status(session)
    assert [(c.site, c.study_uid, c.finding, c.kept, c.values) for c in status.conflicts] == [
        ("site-a", study_uid, "nodule", kept, (0, 1))
    ]
    site_a = next(s for s in status.sites if s.site == "site-a")
    assert (site_a.imports, site_a.rows.conflict, site_a.conflicts) == (2, 1, 1)

    # The same sheet again: refused without --force; forced, still no new labels or conflicts.
    again = import_label_sheet(second_sheet, "site-a")
    assert again.previous_import == second.import_id and again.import_id is None
    forced = import_label_sheet(second_sheet, "site-a", force=True)
    assert (forced.labels_added, forced.conflicts_flagged, forced.counts.conflict) == (0, 0, 1)
    assert _labels(session) == labels
    assert _fresh(session).scalar(select(func.count()).select_from(LabelImport)) == 3


def test_a_row_of_another_patient_is_a_mismatch_also_when_rematched(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    rows = _sheet(synth, "site-a")
    others = {r.patient_id for r in synth.study_records} - {row["patient_id"] for row in rows}
    wrong = dict(rows[0], patient_id=sorted(others)[0])
    sheet = _write(tmp_path / "mixed-up.csv", [wrong, *rows[1:]])

    before = import_label_sheet(sheet, "site-a")  # images not there yet
    _catalogue(settings, synth, "site-a")
    after = _rematch(settings)

    assert before.counts.unmatched == len(rows)
    assert (after.by_site["site-a"].mismatch, after.by_site["site-a"].matched) == (
        1,
        len(rows) - 1,
    )
    study_uid = _pseudonymizer(settings).uid(rows[0]["study_instance_uid"])
    assert not any(uid == study_uid for uid, _ in _labels(session))

    # The same at import time, once the study is catalogued.
    now = import_label_sheet(_write(tmp_path / "only-wrong.csv", [wrong]), "site-a")
    assert now.counts.mismatch == 1 and now.labels_added == 0
    assert [
        (m.import_id, m.row, m.study_uid) for m in label_status(_fresh(session)).mismatches
    ] == [
        (before.import_id, 2, study_uid),
        (now.import_id, 2, study_uid),
    ]


# -- sheet formats and bad sheets ---------------------------------------------------------


def test_xlsx_sheet_with_other_spellings_and_blank_cells(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    _catalogue(settings, synth, "site-a")
    rows = _sheet(synth, "site-a")
    spell = {"1": "Yes", "0": "absent"}
    frame = pd.DataFrame(
        [
            {
                **row,
                "nodule": int(row["nodule"]),  # a number cell, as Excel keeps typed digits
                "effusion": spell[row["effusion"]],
                "cardiomegaly": "",  # not reported
            }
            for row in rows
        ]
    )
    path = tmp_path / "site-a.xlsx"
    frame.to_excel(path, index=False)

    result = import_label_sheet(path, "site-a")

    assert result.counts.matched == len(rows) and result.rejected == []
    pseudo = _pseudonymizer(settings)
    expected = {
        key: value
        for key, value in _truth(pseudo, _chest(synth, "site-a")).items()
        if key[1] != "cardiomegaly"
    }
    assert _labels(session) == expected


def test_bad_rows_are_reported_by_number_and_the_rest_imported(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    _catalogue(settings, synth, "site-a")
    rows = _sheet(synth, "site-a")
    secret = "RIVERA^SECRET"
    bad = [
        dict(rows[0], accession_number=""),  # row 2
        dict(rows[0], nodule="maybe " + secret),  # row 3
        dict(rows[0], nodule="", effusion="", cardiomegaly=""),  # row 4
        dict(rows[0], patient_id=""),  # row 5
        dict(rows[0], accession_number="00123"),  # row 6: leading zeros kept, unmatched
        *rows,  # rows 7 on
    ]
    sheet = _write(tmp_path / "bad-rows.csv", bad)

    result = import_label_sheet(sheet, "site-a")

    reasons = {r.row: r.reason for r in result.rejected}
    assert set(reasons) == {2, 3, 4, 5}
    assert "empty study key (column 'accession_number')" in reasons[2]
    assert "column 'nodule'" in reasons[3] and "accepted:" in reasons[3]
    assert "no finding reported" in reasons[4]
    assert "column 'patient_id'" in reasons[5]
    assert secret not in json.dumps(result.to_dict())
    assert (result.rows, result.counts.unmatched, result.counts.matched) == (
        len(bad),
        1,
        len(rows),
    )
    pseudo = _pseudonymizer(settings)
    unmatched = (
        _fresh(session).scalars(select(LabelRow).where(LabelRow.status == "unmatched")).one()
    )
    assert (unmatched.row_number, unmatched.ref) == (6, pseudo.accession_key("site-a", "00123"))


def test_missing_columns_are_named_with_the_columns_found(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    rows = [{k: v for k, v in row.items() if k != "effusion"} for row in _sheet(synth, "site-a")]
    sheet = _write(tmp_path / "no-effusion.csv", rows)

    with pytest.raises(LabelSheetError) as info:
        import_label_sheet(sheet, "site-a")

    message = str(info.value)
    assert "'effusion' (findings.effusion)" in message
    assert "columns found: 'accession_number', 'study_instance_uid'" in message
    assert "medai campaign init" in message
    assert _fresh(session).scalar(select(func.count()).select_from(LabelImport)) == 0
    with pytest.raises(UnknownSite, match="site-a, site-b, site-c"):
        import_label_sheet(synth.label_sheets["site-a"], "site-z")

    # Exported without its header: the first row is data, and is not quoted back.
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("\n".join(synth.label_sheets["site-a"].read_text().splitlines()[1:]))
    with pytest.raises(LabelSheetError, match="is the first row the header") as info:
        import_label_sheet(headerless, "site-a")
    first = _sheet(synth, "site-a")[0]
    assert not any(first[column] in str(info.value) for column in PHI_COLUMNS)


def test_unreadable_sheets_say_what_to_do(tmp_path: Path) -> None:
    cases = {
        "old.xls": (b"\xd0\xcf\x11\xe0", "re-save the old .xls workbook as .xlsx"),
        "notes.txt": (b"a,b\n", "export the sheet as .csv (UTF-8) or .xlsx"),
        "broken.xlsx": (b"PK\x03\x04 not really a zip", "not a readable .xlsx workbook"),
        "empty.csv": (b"", "the label sheet is empty"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(LabelSheetError, match=re.escape(expected)):
            read_label_sheet(path)
    with pytest.raises(LabelSheetError, match="does not exist"):
        read_label_sheet(tmp_path / "absent.csv")
    with pytest.raises(LabelSheetError, match="more fields than the header"):
        (tmp_path / "wide.csv").write_text("a,b\n1,2,3\n")
        read_label_sheet(tmp_path / "wide.csv")


def test_csv_dialects_keep_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("Accession_Number;Nodule\r\n00042;ja\r\n\r\n007;Ø\r\n".encode("cp1252"))

    sheet = read_label_sheet(path)

    assert sheet.header == ["Accession_Number", "Nodule"]
    # Row numbers are a spreadsheet's: the header is row 1, the blank row 3 is skipped.
    assert sheet.rows == [(2, ["00042", "ja"]), (4, ["007", "Ø"])]


# -- no PHI at rest -----------------------------------------------------------------------


def _dump_catalog(session: Session) -> str:
    _fresh(session)
    lines = []
    for table in Base.metadata.sorted_tables:
        for row in session.execute(select(table)):
            lines.append(f"{table.name}: {json.dumps([str(v) for v in row])}")
    return "\n".join(lines)


def test_no_value_from_the_sheet_reaches_the_catalog_or_the_logs(
    settings: Settings,
    session: Session,
    synth: SynthResult,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _catalogue(settings, synth, "site-a", "site-b")
    phi: set[str] = set()
    caplog.set_level(logging.DEBUG)
    for site in ("site-a", "site-b", "site-c"):  # site-c's rows stay unmatched
        rows = _sheet(synth, site)
        phi |= {row[column] for row in rows for column in PHI_COLUMNS}
        # A file name that itself identifies a patient.
        name = rows[0]["patient_name"].split("^")[0] + "_reports.csv"
        phi.add(name.removesuffix(".csv"))
        sheet = _write(tmp_path / site / name, rows)
        import_label_sheet(sheet, site)
    _catalogue(settings, synth, "site-c")
    _rematch(settings)
    phi |= {r.patient_name.split("^")[0] for r in synth.study_records}
    phi.discard("")

    dump = _dump_catalog(session)
    assert "label_rows" in dump and "study_labels" in dump
    leaked = sorted(value for value in phi if value in dump or value in caplog.text)
    assert leaked == []


# -- the campaign's [labels] mapping ------------------------------------------------------


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE_CAMPAIGN.read_text()
    assert old in text, f"the example no longer contains {old!r}"
    path = tmp_path / "campaign.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'study_key_kind = "accession_number"',
            'study_key_kind = "mrn"',
            "labels.study_key_kind: ",
        ),
        (
            'study_key = "accession_number"   #',
            "#",
            "labels.study_key: required field is missing",
        ),
        (
            'study_key = "study_instance_uid"\nstudy_key_kind = "study_uid"',
            'study_key = "RIS_REF"',
            "labels.sites.site-b.study_key_kind: cannot tell from the column name 'RIS_REF'",
        ),
        ("[labels.sites.site-b]", "[labels.sites.site-x]", "labels.sites.site-x: no site"),
        ('nodule = "nodule"', 'Nodule-1 = "nodule"', "labels.findings.Nodule-1: finding name"),
        (
            'nodule = "nodule"',
            'nodules = "nodule"',
            "sites[0].targets[2].finding: finding 'nodule' has no column in labels.findings",
        ),
        ('effusion = "effusion"', 'effusion = "Patient_ID"', "labels.findings.effusion: column"),
        ('negative = ["0", "no"', 'negative = ["0", "yes"', "labels.negative: 'yes' is both"),
        ('positive = ["1"', 'positive = [" "', "labels.positive[0]: a spelling is empty"),
        ('patient_id = "patient_id"', 'patient_ids = "patient_id"', "labels.patient_ids: unknown"),
    ],
    ids=[
        "bad-kind",
        "no-study-key",
        "kind-not-inferable",
        "unknown-site",
        "bad-finding-name",
        "target-finding-unmapped",
        "column-used-twice",
        "spelling-both-ways",
        "empty-spelling",
        "misspelt-field",
    ],
)
def test_invalid_label_mapping_names_the_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = _edited(tmp_path, old, new)

    with pytest.raises(CampaignError) as info:
        load_campaign(path)

    assert f"{path}: {expected}" in str(info.value)


def test_mapping_infers_the_key_kind_and_applies_site_overrides() -> None:
    document = load_campaign(EXAMPLE_CAMPAIGN).model_dump(mode="json")
    labels = document["labels"]
    del labels["study_key_kind"]
    labels["sites"] = {
        "site-b": {"study_key": "StudyInstanceUID", "patient_id": ""},
        "site-c": {"findings": {"cardiomegaly": "CTR_gt_05"}, "positive": ["ja"]},
    }
    campaign = CampaignDefinition.model_validate(document)
    assert campaign.labels is not None

    site_a, site_b, site_c = (campaign.labels.for_site(s) for s in ("site-a", "site-b", "site-c"))

    assert (site_a.study_key_kind, site_a.patient_id) == ("accession_number", "patient_id")
    assert (site_b.study_key_kind, site_b.patient_id) == ("study_uid", None)
    assert site_c.findings == {"cardiomegaly": "CTR_gt_05"}
    assert site_c.positive == {"ja"} and "0" in site_c.negative


# -- the command line ---------------------------------------------------------------------


def test_cli_import_status_rematch(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    runner = CliRunner()
    _catalogue(settings, synth, "site-a")

    imported = runner.invoke(
        app, ["labels", "import", str(synth.label_sheets["site-a"]), "--site", "site-a", "--json"]
    )
    kept = runner.invoke(
        app, ["labels", "import", str(synth.label_sheets["site-c"]), "--site", "site-c"]
    )
    again = runner.invoke(
        app, ["labels", "import", str(synth.label_sheets["site-a"]), "--site", "site-a"]
    )
    _catalogue(settings, synth, "site-c")
    rematched = runner.invoke(app, ["labels", "rematch", "--json"])
    status = runner.invoke(app, ["labels", "status", "--json"])
    table = runner.invoke(app, ["labels", "status"])

    for result in (imported, kept, again, rematched, status, table):
        assert result.exit_code == 0, result.output
    summary = json.loads(imported.stdout.splitlines()[-1])
    rows = len(_chest(synth, "site-a"))
    assert (summary["site"], summary["rows"], summary["matched"], summary["rejected"]) == (
        "site-a",
        rows,
        rows,
        0,
    )
    assert "unmatched: kept until the images arrive" in kept.output
    assert "medai labels rematch" in kept.output
    assert "already imported" in again.output
    rematch = json.loads(rematched.stdout.splitlines()[-1])
    assert rematch["sites"]["site-c"]["matched"] == len(_chest(synth, "site-c"))
    assert rematch["still_unmatched"] == 0
    by_site = {s["site"]: s for s in json.loads(status.stdout.splitlines()[-1])["sites"]}
    assert by_site["site-a"]["matched"] == rows and by_site["site-b"]["rows"] == 0
    assert "No conflicting labels." in table.output


def test_cli_errors_exit_2_and_say_what_to_do(
    settings: Settings, session: Session, synth: SynthResult, tmp_path: Path
) -> None:
    runner = CliRunner()
    notes = tmp_path / "labels.txt"
    notes.write_text("a,b\n")

    wrong_type = runner.invoke(app, ["labels", "import", str(notes), "--site", "site-a"])
    unknown_site = runner.invoke(
        app, ["labels", "import", str(synth.label_sheets["site-a"]), "--site", "site-z"]
    )
    helped = runner.invoke(app, ["labels", "import", "--help"])

    assert wrong_type.exit_code == 2 and "export the sheet as .csv" in wrong_type.output
    assert unknown_site.exit_code == 2 and "Give --site one of" in unknown_site.output
    assert helped.exit_code == 0 and "--site" in helped.output


def test_a_folder_import_matches_the_sheet_imported_before_its_images(
    settings: Settings, session: Session, synth: SynthResult
) -> None:
    """Receivers re-match at the end of their run: no manual `labels rematch` needed."""
    from medai.collection.receivers.folder import import_path

    pseudo = _pseudonymizer(settings)
    sheet = import_label_sheet(synth.label_sheets["site-a"], "site-a")
    assert sheet.counts.unmatched == sheet.rows > 0
    site_root = synth.study_records[0].files[0].parents[0]
    while site_root.name != "site-a":
        site_root = site_root.parent
    import_path(site_root, "site-a", settings=settings, workers=1)
    assert _labels(session) == _truth(pseudo, _chest(synth, "site-a"))
    assert set(_fresh(session).scalars(select(LabelRow.status))) == {"matched"}
