"""The progress counters kept by the pipeline: exact, once per row, and backfilled on upgrade."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import func, select

from medai.catalog.db import alembic_config, create_engine_for, session_factory, upgrade
from medai.catalog.models import Instance, ProgressCount, Study
from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import SynthResult, generate
from tests.utils.campaign import init_example_campaign


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    out = tmp_path_factory.mktemp("synth")
    return generate(out, studies=6, seed=11, sites=("site-a", "site-b"), image_size=48, ct_slices=3)


def _offers(synth: SynthResult) -> list[Offer]:
    return [
        Offer(path.read_bytes(), record.site, "folder")
        for record in synth.study_records
        for path in record.files
    ]


def _counters(settings: Settings) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(
                ProgressCount.site_id,
                ProgressCount.modality,
                ProgressCount.body_part,
                func.sum(ProgressCount.studies),
                func.sum(ProgressCount.instances),
                func.sum(ProgressCount.bytes),
            ).group_by(ProgressCount.site_id, ProgressCount.modality, ProgressCount.body_part)
        ).all()
    engine.dispose()
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4]), int(r[5])) for r in rows}


def _truth(settings: Settings) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """The same figures computed the slow way, from the catalogued rows."""
    engine = create_engine_for(settings.resolved_database_url)
    truth: dict[tuple[str, str, str], list[int]] = {}
    with session_factory(engine)() as session:
        for site, modality, body_part in session.execute(
            select(Study.site_id, Study.modality, Study.body_part)
        ):
            truth.setdefault((site, modality or "", body_part or ""), [0, 0, 0])[0] += 1
        for site, modality, body_part, size in session.execute(
            select(Instance.site_id, Instance.modality, Instance.body_part, Instance.byte_size)
        ):
            entry = truth.setdefault((site, modality or "", body_part or ""), [0, 0, 0])
            entry[1] += 1
            entry[2] += size
    engine.dispose()
    return {key: (a, b, c) for key, (a, b, c) in truth.items()}


def test_counters_match_the_catalogue_and_ignore_duplicates(
    settings: Settings, synth: SynthResult
) -> None:
    init_example_campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    offers = _offers(synth)
    # Two batches that split studies, then everything again (all duplicates).
    pipeline.ingest_many(offers[: len(offers) // 2])
    pipeline.ingest_many(offers[len(offers) // 2 :])
    pipeline.ingest_many(offers)
    counters = _counters(settings)
    assert counters == _truth(settings)
    assert sum(c[1] for c in counters.values()) == synth.instances
    assert sum(c[0] for c in counters.values()) == synth.studies
    kinds = {(site, modality) for site, modality, _ in counters}
    assert ("site-a", "CT") in kinds or ("site-b", "CT") in kinds


def test_studies_carry_a_keyed_accession_hash_not_the_number(
    settings: Settings, synth: SynthResult
) -> None:
    init_example_campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    pipeline.ingest_many(_offers(synth))
    pseudo = pipeline.deidentifier.pseudonymizer
    engine = create_engine_for(settings.resolved_database_url)
    with session_factory(engine)() as session:
        stored = dict(session.execute(select(Study.study_uid, Study.accession_key)).all())
    engine.dispose()
    for record in synth.study_records:
        key = stored[pseudo.uid(record.study_instance_uid)]
        assert key == pseudo.accession_key(record.site, record.accession_number)
        assert record.accession_number not in key
    # The same accession number at another hospital is another study.
    record = synth.study_records[0]
    assert pseudo.accession_key("site-c", record.accession_number) != pseudo.accession_key(
        record.site, record.accession_number
    )


def test_upgrade_backfills_counters_from_existing_rows(
    settings: Settings, synth: SynthResult
) -> None:
    init_example_campaign(settings)
    IngestPipeline.from_settings(settings).ingest_many(_offers(synth))
    expected = _counters(settings)
    engine = create_engine_for(settings.resolved_database_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0002")
    upgrade(engine)
    engine.dispose()
    assert _counters(settings) == expected


def test_counters_stay_exact_under_concurrent_ingest(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two importers (each with several worker processes) share studies: no lost update."""
    import threading

    from medai.collection.receivers.folder import import_path

    init_example_campaign(settings)
    out = tmp_path_factory.mktemp("concurrent")
    synth = generate(out, studies=8, seed=23, sites=("site-a",), image_size=32, ct_slices=4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            import_path(out / "site-a", "site-a", settings=settings, workers=2)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    counters = _counters(settings)
    assert counters == _truth(settings)
    assert sum(c[1] for c in counters.values()) == synth.instances
    assert sum(c[0] for c in counters.values()) == synth.studies
