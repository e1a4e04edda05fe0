"""Acting on the quarantine: list, show without PHI, release after a real fix, purge; audited."""

from __future__ import annotations

import datetime as dt
import io
import json
import os

import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import IngestEvent, QuarantineEntry
from medai.cli import app
from medai.collection.accounting import verify_collection
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.collection.quarantine_actions import RELEASE_SOURCE
from medai.config import Settings, get_settings
from medai.dicom.synth import SynthResult, generate
from tests.utils.audit import audit_records
from tests.utils.campaign import bad_inputs, init_example_campaign

# Small enough to refuse every synthetic image, as a too-low limit would in a campaign.
LOW_LIMIT = "2048"
TEXT = b"Referral for DOE^JANE, MRN 55501234, 12 Elm Street\n" * 4


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    out = tmp_path_factory.mktemp("synth")
    return generate(out, studies=2, seed=11, sites=("site-a",), image_size=32, ct_slices=2)


@pytest.fixture
def campaign(settings: Settings) -> Settings:
    init_example_campaign(settings)
    return settings


def medai(*args: str, input: str | None = None) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args), input=input)


def _json(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(document, dict)
    return document


def _offer_all(files: dict[str, bytes], site: str = "site-a") -> None:
    """Offer each input as a C-STORE receiver would, with the settings of the environment."""
    get_settings.cache_clear()
    pipeline = IngestPipeline.from_settings(get_settings())
    try:
        pipeline.ingest_many([Offer(data, site, "c-store") for data in files.values()])
    finally:
        pipeline.engine.dispose()


def _entries(settings: Settings) -> dict[str, QuarantineEntry]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(QuarantineEntry)).all()
            session.expunge_all()
    finally:
        engine.dispose()
    return {row.raw_sha256: row for row in rows}


def _phi_free(text: str, synth: SynthResult) -> None:
    leaked = [v for v in (*synth.phi_values, *synth.uid_values) if v and v in text]
    assert not leaked, f"PHI in the output: {leaked}"


def test_a_real_fix_then_release_stores_and_verify_stays_green(
    campaign: Settings, synth: SynthResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = [path.read_bytes() for path in synth.files[:2]]
    burned = bad_inputs(good[0])["burned-in-annotation"]
    # The mistake: a limit below the campaign's images. Everything is refused as too large.
    monkeypatch.setenv("MEDAI_MAX_INSTANCE_BYTES", LOW_LIMIT)
    _offer_all({"a": good[0], "b": good[1], "burned": burned, "text": TEXT})
    listed = _json(medai("collect", "quarantine", "list", "--reason", "too-large", "--json"))
    assert listed["total"] == 3
    entries = listed["entries"]
    assert isinstance(entries, list)
    ids = sorted(int(e["id"]) for e in entries)
    assert {e["status"] for e in entries} == {"held"}
    # A steward looks at one: structure and safe values, never the planted PHI or UIDs.
    shown = medai("collect", "quarantine", "show", str(ids[0]))
    assert shown.exit_code == 0, shown.output
    assert "Modality" in shown.output and "PatientName" in shown.output
    _phi_free(shown.output, synth)
    view = _json(medai("collect", "quarantine", "show", str(ids[0]), "--json"))
    header = view["header"]
    assert isinstance(header, dict) and header["kind"] == "DICOM"
    values = {e["keyword"]: e["value"] for e in header["elements"]}
    assert values["Modality"] in ("CR", "DX", "CT") and values["Rows"] is not None
    assert values["PatientName"] is None and values["SOPInstanceUID"] is None
    assert values["StudyDate"] is None and values["TransferSyntaxUID"].startswith("1.2.840")
    _phi_free(json.dumps(view), synth)
    viewed = audit_records(campaign, "quarantine.view")
    assert len(viewed) == 2 and viewed[0].actor.startswith("user:")
    assert viewed[0].details["entry"] == ids[0]

    # The fix: the limit back to the campaign's (the default), then release by reason.
    monkeypatch.delenv("MEDAI_MAX_INSTANCE_BYTES")
    released = _json(
        medai("collect", "quarantine", "release", "--reason", "too-large", "--yes", "--json")
    )
    assert released["counts"] == {"released": 2, "requarantined": 1}, released
    by_outcome = {e["outcome"]: e for e in released["entries"]}  # type: ignore[attr-defined]
    assert by_outcome["requarantined"]["reason_code"] == "burned-in-annotation"

    rows = _entries(campaign)
    quarantine = campaign.resolved_quarantine_dir
    for row in rows.values():
        raw = quarantine / row.relative_path
        if row.reason_code == "burned-in-annotation":  # still refused: kept, new reason
            assert row.released_at is None and raw.exists()
            assert "BurnedInAnnotation is YES" in row.reason
        elif row.reason_code == "not-dicom":  # not chosen
            assert row.released_at is None and raw.exists()
        else:  # stored now: closed, raw PHI deleted
            assert row.released_at is not None and not raw.exists()
    report = verify_collection(campaign)
    assert report.ok, report.problems
    assert report.instances == 2
    assert report.events == {"stored": 2, "quarantined": 5}
    assert medai("collect", "verify").exit_code == 0

    engine = create_engine_for(campaign.resolved_database_url)
    with session_factory(engine)() as session:
        sources = set(session.scalars(select(IngestEvent.source)))
    engine.dispose()
    assert RELEASE_SOURCE in sources
    records = audit_records(campaign, "quarantine.release")
    assert len(records) == 3
    assert all(r.actor.startswith("user:") for r in records)
    assert {r.details["outcome"] for r in records} == {"stored", "quarantined"}
    assert {r.subject for r in records} <= set(rows)

    closed = _json(medai("collect", "quarantine", "list", "--status", "closed", "--json"))
    assert closed["total"] == 2
    assert {e["status"] for e in closed["entries"]} == {"released"}  # type: ignore[attr-defined]
    assert {e["closed_by"] for e in closed["entries"]} == {records[0].actor}  # type: ignore[attr-defined]
    # Releasing again finds nothing held under that reason.
    again = _json(
        medai("collect", "quarantine", "release", "--reason", "too-large", "--yes", "--json")
    )
    assert again["counts"] == {}
    # The summary of before is unchanged in form; scripts reading it keep working.
    summary = _json(medai("collect", "quarantine", "--json"))
    assert summary["held"] == 2 and summary["released"] == 2


def test_purge_deletes_raw_files_now_and_keeps_rows(campaign: Settings) -> None:
    _offer_all({"text": TEXT, "other": b"%PDF-1.4 scanned referral of DOE^JANE"})
    listed = _json(medai("collect", "quarantine", "list", "--json"))
    entries = listed["entries"]
    assert isinstance(entries, list) and len(entries) == 2
    pdf = next(e for e in entries if e["byte_size"] != len(TEXT))
    # Asked, and answered no: nothing happens.
    declined = medai("collect", "quarantine", "purge", str(pdf["id"]), input="n\n")
    assert declined.exit_code == 1 and "nothing was done" in declined.output
    assert all(r.released_at is None for r in _entries(campaign).values())
    purged = _json(medai("collect", "quarantine", "purge", str(pdf["id"]), "--yes", "--json"))
    assert purged["counts"] == {"discarded": 1}
    rows = _entries(campaign)
    assert len(rows) == 2
    gone = rows[str(pdf["sha256"])]
    assert gone.released_at is not None
    assert not (campaign.resolved_quarantine_dir / gone.relative_path).exists()
    assert verify_collection(campaign).ok
    records = audit_records(campaign, "quarantine.discard")
    assert [r.subject for r in records] == [pdf["sha256"]]
    assert records[0].details["bytes"] == pdf["byte_size"]
    shown = _json(medai("collect", "quarantine", "show", str(pdf["id"]), "--json"))
    assert shown["status"] == "discarded" and shown["header"] is None


def test_show_describes_a_file_that_is_not_dicom_without_its_bytes(campaign: Settings) -> None:
    _offer_all({"text": TEXT})
    entry = next(iter(_entries(campaign).values()))
    shown = medai("collect", "quarantine", "show", str(entry.id))
    assert shown.exit_code == 0, shown.output
    assert "not-dicom" in shown.output and "file: text" in shown.output
    assert f"{len(TEXT)} bytes" in shown.output
    for planted in ("DOE", "JANE", "55501234", "Elm Street"):
        assert planted not in shown.output


def test_selection_is_explicit_and_errors_say_what_to_do(campaign: Settings) -> None:
    _offer_all({"text": TEXT})
    nothing = medai("collect", "quarantine", "release", "--yes")
    assert nothing.exit_code == 2
    assert "choose entries by id, or by --site" in nothing.output
    unknown = medai("collect", "quarantine", "show", "999")
    assert unknown.exit_code == 2
    assert "no quarantine entry 999: `medai collect quarantine list` shows the ids" in (
        unknown.output
    )
    needs_yes = medai("collect", "quarantine", "purge", "--all", "--json")
    assert needs_yes.exit_code == 2 and "needs --yes" in needs_yes.output
    assert medai("collect", "quarantine", "list", "--status", "gone").exit_code == 2
    # Filters: by site and by day.
    assert _json(medai("collect", "quarantine", "list", "--site", "site-b", "--json"))["total"] == 0
    today = dt.datetime.now(dt.UTC).date()
    tomorrow = (today + dt.timedelta(days=1)).isoformat()
    assert (
        _json(medai("collect", "quarantine", "list", "--since", tomorrow, "--json"))["total"] == 0
    )
    assert (
        _json(medai("collect", "quarantine", "list", "--until", today.isoformat(), "--json"))[
            "total"
        ]
        == 1
    )


def test_list_pages(campaign: Settings) -> None:
    _offer_all({str(i): b"not dicom %d" % i for i in range(5)})
    first = _json(medai("collect", "quarantine", "list", "--per-page", "2", "--json"))
    assert first["total"] == 5 and first["pages"] == 3 and len(first["entries"]) == 2  # type: ignore[arg-type]
    seen = set()
    for page in (1, 2, 3):
        document = _json(
            medai("collect", "quarantine", "list", "--per-page", "2", "--page", str(page), "--json")
        )
        seen |= {e["id"] for e in document["entries"]}  # type: ignore[attr-defined]
    assert len(seen) == 5
    text = medai("collect", "quarantine", "list", "--per-page", "2")
    assert "page 1 of 3, 5 entries" in text.output and "next: --page 2" in text.output


def test_edge_inputs_are_not_released(campaign: Settings, synth: SynthResult) -> None:
    # An identified file an edge forwarded: refused by the re-screen, and not re-offered
    # (de-identifying it at the centre would give it other UIDs than the edge's).
    get_settings.cache_clear()
    pipeline = IngestPipeline.from_settings(get_settings())
    raw = synth.files[0].read_bytes()
    outcome = pipeline.ingest_many(
        [Offer(raw, "site-a", "edge", edge_receipt_day=dt.date(2026, 12, 1))]
    )[0]
    pipeline.engine.dispose()
    assert outcome.kind == "quarantined" and outcome.reason_code is not None
    assert outcome.reason_code.startswith("edge-")
    result = medai("collect", "quarantine", "release", "--all", "--yes", "--json")
    assert result.exit_code != 0
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["counts"] == {"refused": 1}
    assert all(r.released_at is None for r in _entries(campaign).values())


def test_quarantine_without_subcommand_keeps_its_options(campaign: Settings) -> None:
    _offer_all({"text": TEXT})
    summary = medai("collect", "quarantine")
    assert summary.exit_code == 0 and "held 1, purged 0" in summary.output
    purged = medai("collect", "quarantine", "--purge")
    assert purged.exit_code == 0 and "purged 0 file(s)" in purged.output
    for sub in ("list", "show", "release", "purge"):
        helped = medai("collect", "quarantine", sub, "--help")
        assert helped.exit_code == 0 and "Usage" in helped.output


def test_header_view_of_hostile_files_never_raises() -> None:
    from medai.collection.quarantine_view import describe_raw
    from tests.utils.bombs import deflate_bomb

    bomb = describe_raw(deflate_bomb(200 * 1024**2))
    assert bomb.kind == "DICOM"
    nested = pydicom.Dataset()
    inner = nested
    for _ in range(50):
        child = pydicom.Dataset()
        inner.ReferencedImageSequence = pydicom.Sequence([child])
        inner = child
    buffer = io.BytesIO()
    nested.save_as(buffer, implicit_vr=False, little_endian=True)
    deep = describe_raw(b"\x08\x00" + buffer.getvalue()[2:])
    assert max(e.depth for e in deep.elements) < 10
    for raw in (b"", os.urandom(3000), b"DICM" * 40, b"\x00" * 128 + b"DICM" + b"\xff" * 64):
        view = describe_raw(raw)
        assert view.byte_size == len(raw)


def test_only_codes_numbers_and_standard_uids_outside_annex_e_are_shown() -> None:
    from medai.collection.quarantine_view import is_shown

    assert is_shown(0x00080060, "CS", "CR")  # Modality
    assert is_shown(0x00280010, "US", 512)  # Rows
    assert is_shown(0x00020010, "UI", "1.2.840.10008.1.2.1")  # a transfer syntax
    assert is_shown(0x00080016, "UI", "1.2.840.10008.5.1.4.1.1.1")  # CR Image Storage
    assert not is_shown(0x00080018, "UI", "1.2.826.0.1.3680043.8.498.1")  # an instance's UID
    assert not is_shown(0x00100040, "CS", "F")  # PatientSex: in Annex E
    assert not is_shown(0x00101030, "DS", "71")  # PatientWeight: in Annex E
    assert not is_shown(0x00080020, "DA", "20261201")  # StudyDate
    assert not is_shown(0x00081030, "LO", "CHEST PA")  # free text, even when harmless
    assert not is_shown(0x00091001, "CS", "X")  # private
    assert not is_shown(0x60000010, "US", 512)  # overlay group (Annex E wildcard)
