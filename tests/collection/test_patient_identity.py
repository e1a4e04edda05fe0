"""Patient identity with its issuer, and re-sent images recognised, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pydicom
import pytest
from alembic import command
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from medai.catalog.db import alembic_config, create_engine_for, session_factory, upgrade
from medai.catalog.models import AuditRecord, Instance, Patient, Study
from medai.collection.campaign.definition import CampaignDefinition, load_campaign
from medai.collection.campaign.setup import init_campaign
from medai.collection.pipeline import IngestPipeline
from medai.collection.pseudonymize import Pseudonymizer
from medai.config import Settings
from medai.errors import CampaignError
from medai.store import ObjectStore
from tests.utils.campaign import EXAMPLE_CAMPAIGN, dataset_bytes
from tests.utils.deid_factories import UID_ROOT, make_ct

KEY = bytes(range(32))


def _campaign(settings: Settings, issuers: dict[str, str] | None = None) -> CampaignDefinition:
    definition = load_campaign(EXAMPLE_CAMPAIGN)
    if issuers:
        sites = [s.model_copy(update={"issuer": issuers.get(s.id)}) for s in definition.sites]
        definition = definition.model_copy(update={"sites": sites})
    init_campaign(definition, settings)
    return definition


def _ct(patient_id: str, *, issuer: str | None, name: str, birth: str, seed: int) -> bytes:
    ds: Dataset = make_ct(patient_id=patient_id, seed=seed, size=16)
    ds.PatientName = name
    ds.PatientBirthDate = birth
    if issuer is None:
        del ds.IssuerOfPatientID
    else:
        ds.IssuerOfPatientID = issuer
    return dataset_bytes(ds)


@pytest.fixture
def catalog(settings: Settings) -> Iterator[tuple[Settings, Engine]]:
    engine = create_engine_for(settings.resolved_database_url)
    yield settings, engine
    engine.dispose()


def _patients(engine: Engine) -> dict[str, set[str]]:
    """``{patient pseudonym: {site of each of its studies}}``."""
    found: dict[str, set[str]] = {}
    with session_factory(engine)() as session:
        for pseudonym, site in session.execute(
            select(Patient.pseudonym, Study.site_id).join(Study, Study.patient_id == Patient.id)
        ):
            found.setdefault(pseudonym, set()).add(site)
    return found


def _study_dates(engine: Engine) -> dict[str, object]:
    with session_factory(engine)() as session:
        rows = session.execute(select(Study.site_id, Study.study_date))
        return dict(rows.all())


# -- the reproduction: one PatientID at two sites -----------------------------------------


@pytest.mark.parametrize("in_file", [True, False], ids=["issuer-in-file", "site-issuer"])
def test_the_same_id_at_two_sites_is_two_patients_with_two_date_shifts(
    catalog: tuple[Settings, Engine], in_file: bool
) -> None:
    settings, engine = catalog
    _campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    a = _ct("1001", issuer="A-HIS" if in_file else None, name="Tran^Van", birth="19500101", seed=1)
    b = _ct("1001", issuer="B-HIS" if in_file else None, name="Le^Thi", birth="19800707", seed=2)
    assert pipeline.ingest(a, "site-a", "folder").kind == "stored"
    assert pipeline.ingest(b, "site-b", "folder").kind == "stored"

    patients = _patients(engine)
    assert sorted(patients.values(), key=sorted) == [{"site-a"}, {"site-b"}]
    dates = _study_dates(engine)  # both files have the same original study date
    assert dates["site-a"] != dates["site-b"]


def test_sites_declaring_one_issuer_share_the_patient(catalog: tuple[Settings, Engine]) -> None:
    settings, engine = catalog
    _campaign(settings, {"site-a": "national-id", "site-b": " NATIONAL-ID "})
    pipeline = IngestPipeline.from_settings(settings)
    for site, seed in (("site-a", 1), ("site-b", 2)):
        data = _ct("079123456789", issuer=None, name="Tran^Van", birth="19500101", seed=seed)
        assert pipeline.ingest(data, site, "folder").kind == "stored"
    # A third site with its own (default) issuer: the same number is someone else there.
    data = _ct("079123456789", issuer=None, name="Pham^Minh", birth="19700101", seed=3)
    assert pipeline.ingest(data, "site-c", "folder").kind == "stored"

    assert sorted(map(sorted, _patients(engine).values())) == [["site-a", "site-b"], ["site-c"]]
    dates = _study_dates(engine)
    assert dates["site-a"] == dates["site-b"] != dates["site-c"]


def test_issuer_of_patient_id_in_the_file_wins_over_the_site_issuer(
    catalog: tuple[Settings, Engine],
) -> None:
    settings, engine = catalog
    _campaign(settings, {"site-a": "SHARED", "site-b": "SHARED"})
    pipeline = IngestPipeline.from_settings(settings)
    # Same declared site issuer, but the files name different issuers: two patients.
    pipeline.ingest(
        _ct("1001", issuer="A-HIS", name="X^Y", birth="19500101", seed=1), "site-a", "f"
    )
    pipeline.ingest(
        _ct("1001", issuer="B-HIS", name="Z^W", birth="19600101", seed=2), "site-b", "f"
    )
    # The file's issuer names the same domain whatever site sends it (case and spaces ignored).
    pipeline.ingest(
        _ct("77", issuer="city-his ", name="Q^R", birth="19700101", seed=3), "site-a", "f"
    )
    pipeline.ingest(
        _ct("77", issuer="CITY-HIS", name="Q^R", birth="19700101", seed=4), "site-c", "f"
    )

    sites = sorted(map(sorted, _patients(engine).values()))
    assert sites == [["site-a"], ["site-a", "site-c"], ["site-b"]]


def test_an_issuer_in_use_cannot_be_changed(catalog: tuple[Settings, Engine]) -> None:
    settings, _ = catalog
    _campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    pipeline.ingest(_ct("1001", issuer=None, name="X^Y", birth="19500101", seed=1), "site-a", "f")
    with pytest.raises(CampaignError, match="split"):
        _campaign(settings, {"site-a": "OTHER"})
    _campaign(settings, {"site-b": "OTHER"})  # site-b has sent nothing yet: allowed


# -- the reproduction: the same image under another MRN and new UIDs ----------------------


def test_a_resend_under_a_new_mrn_and_new_uids_is_recorded(
    catalog: tuple[Settings, Engine],
) -> None:
    settings, engine = catalog
    _campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    first = make_ct(patient_id="1001", seed=5, size=16)
    again = make_ct(patient_id="1001-NEW", seed=5, size=16)  # same pixels, new UIDs
    other = make_ct(patient_id="2002", seed=6, size=16)
    outcomes = [
        pipeline.ingest(dataset_bytes(ds), "site-a", "folder") for ds in (first, again, other)
    ]
    assert [o.kind for o in outcomes] == ["stored", "stored", "stored"]

    with session_factory(engine)() as session:
        rows = {
            row.sop_instance_uid: row
            for row in session.scalars(select(Instance).order_by(Instance.id))
        }
        original, resend, unrelated = (rows[o.sop_instance_uid or ""] for o in outcomes)
        assert original.pixel_hash and original.pixel_hash == resend.pixel_hash
        assert original.pixel_hash_status == "native"
        assert unrelated.pixel_hash not in {None, original.pixel_hash}
        assert (original.resend_of_instance_id, resend.resend_of_instance_id) == (None, original.id)
        assert unrelated.resend_of_instance_id is None
        details = _audit_details(session, outcomes[1].sop_instance_uid)
        assert details["resend_of"] == original.sop_instance_uid
    assert len(_patients(engine)) == 3  # two MRNs are two patients; the split links them


def test_a_blank_image_links_nothing(catalog: tuple[Settings, Engine]) -> None:
    settings, engine = catalog
    _campaign(settings)
    pipeline = IngestPipeline.from_settings(settings)
    for patient in ("1", "2"):
        ds = make_ct(patient_id=patient, seed=1, size=16)
        ds.PixelData = bytes(16 * 16 * 2)
        pipeline.ingest(dataset_bytes(ds), "site-a", "folder")
    with session_factory(engine)() as session:
        rows = session.execute(select(Instance.pixel_hash, Instance.pixel_hash_status)).all()
    assert [tuple(r) for r in rows] == [(None, "constant"), (None, "constant")]


def _audit_details(session: Session, subject: str | None) -> dict[str, object]:
    record = session.scalars(select(AuditRecord).where(AuditRecord.subject == subject)).one()
    return dict(record.details or {})


# -- an existing catalog: upgraded, its patients keep their pseudonyms -------------------


def test_a_catalog_from_before_0006_keeps_its_patients_after_the_upgrade(
    catalog: tuple[Settings, Engine],
) -> None:
    settings, engine = catalog
    _campaign(settings)
    # Catalogue as medai did before 0006: the ID alone (issuer None is that scheme).
    old = IngestPipeline.from_settings(settings)
    old.identities.issuer = lambda ds, site: None  # type: ignore[method-assign]
    study = generate_uid(UID_ROOT)
    first = [
        _ct("1001", issuer="A-HIS", name="Tran^Van", birth="19500101", seed=seed) for seed in (1, 2)
    ]
    b_file = _ct("1001", issuer="B-HIS", name="Le^Thi", birth="19800707", seed=3)
    for data in first:
        assert old.ingest(data, "site-a", "folder").kind == "stored"
    assert old.ingest(b_file, "site-b", "folder").kind == "stored"
    # The two sites' 1001 were merged: the defect. The upgrade cannot undo it (the IDs are
    # gone), but must not make it worse.
    legacy = Pseudonymizer(_key(settings)).patient_pseudonym(None, "1001")
    assert _patients(engine) == {legacy: {"site-a", "site-b"}}
    _downgrade_to_0005(engine)
    upgrade(engine)
    with session_factory(engine)() as session:
        assert set(session.scalars(select(Patient.scheme))) == {"v1"}

    new = IngestPipeline.from_settings(settings)
    # The same files again: duplicates, no new patient.
    assert [new.ingest(d, "site-a", "folder").kind for d in first] == ["duplicate"] * 2
    # A new study of site-a's patient joins it, with the same date shift.
    later = make_ct(patient_id="1001", seed=9, size=16, study_uid=study)
    later.IssuerOfPatientID = "A-HIS"
    outcome = new.ingest(dataset_bytes(later), "site-a", "folder")
    assert outcome.kind == "stored"
    # Site-c never sent a 1001: its 1001 is a new patient.
    c_file = _ct("1001", issuer=None, name="Pham^Minh", birth="19700101", seed=4)
    assert new.ingest(c_file, "site-c", "folder").kind == "stored"

    patients = _patients(engine)
    assert patients[legacy] == {"site-a", "site-b"}
    assert len(patients) == 2
    with session_factory(engine)() as session:
        dates = set(
            session.scalars(
                select(Study.study_date)
                .join(Patient, Patient.id == Study.patient_id)
                .where(Patient.pseudonym == legacy, Study.site_id == "site-a")
            )
        )
        key = session.scalar(
            select(Instance.store_key).where(Instance.sop_instance_uid == outcome.sop_instance_uid)
        )
    assert len(dates) == 1  # the same original date, the same shift, before and after
    assert key is not None
    stored = pydicom.dcmread(ObjectStore(settings.resolved_store_dir).path(key))
    assert stored.PatientID == legacy


def _downgrade_to_0005(engine: Engine) -> None:
    """Back to the schema medai had before 0006, rows kept."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0005")
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("patients")}
    assert "scheme" not in columns


def _key(settings: Settings) -> bytes:
    from medai.collection.pseudonymize import load_key

    return load_key(settings.resolved_key_file)
