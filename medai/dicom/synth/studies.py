"""Plan and write deterministic synthetic studies for several sites, with their label sheets."""

from __future__ import annotations

import datetime
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from medai.dicom.synth.datasets import (
    StudyPlan,
    chest_instance,
    ct_instance,
    usable_transfer_syntax,
)
from medai.dicom.synth.labels import write_label_sheet
from medai.dicom.synth.phi import FakePatient, PhiRecord, make_patient, make_staff
from medai.dicom.synth.profiles import INSTITUTIONS, PROFILES, profile_for

__all__ = ["SynthResult", "SynthStudy", "generate", "make_ct_slice"]

logger = logging.getLogger(__name__)

FINDING_RATES = {"nodule": 0.3, "effusion": 0.25, "cardiomegaly": 0.3}
_FIRST_DAY = datetime.date(2022, 1, 3)


@dataclass(frozen=True)
class SynthStudy:
    """What was generated for one study (original, identifying values)."""

    site: str
    patient_id: str
    patient_name: str
    birth_date: datetime.date
    study_date: datetime.date
    accession_number: str
    study_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    nodule: bool
    effusion: bool
    cardiomegaly: bool
    image_seed: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class SynthResult:
    """The files written by :func:`generate` and everything tests need to check them.

    ``phi_values`` holds every distinctive identifying string planted (names, IDs,
    addresses, telephone numbers, institution, free text, private elements), none of
    which may survive de-identification. ``device_identity_values`` (station names,
    device serial numbers) are kept apart: the Retain Device Identity option keeps
    them. ``uid_values`` are the original Study, Series, SOP Instance and Frame of
    Reference UIDs. Dates are in ``study_records``.
    """

    files: list[Path]
    label_sheets: dict[str, Path]
    instances: int
    studies: int
    patients: int
    phi_values: frozenset[str] = frozenset()
    device_identity_values: frozenset[str] = frozenset()
    uid_values: frozenset[str] = frozenset()
    phi_by_attribute: dict[str, frozenset[str]] = field(default_factory=dict)
    study_records: list[SynthStudy] = field(default_factory=list)
    transfer_syntaxes: frozenset[str] = frozenset()


def _unique(rng: np.random.Generator, taken: set[str], prefix: str, digits: int) -> str:
    """``prefix`` and ``digits`` random digits, not yet in ``taken`` (added to it)."""
    while True:
        value = f"{prefix}{int(rng.integers(0, 10**digits)):0{digits}d}"
        if value not in taken:
            taken.add(value)
            return value


def _plan(studies: int, seed: int, sites: Sequence[str], ct_slices: int) -> list[StudyPlan]:
    rng = np.random.default_rng([seed, 1])
    staff = [make_staff(np.random.default_rng([seed, 2, i])) for i in range(len(sites))]
    taken: set[str] = set()
    patients: list[FakePatient] = []
    sites_of: dict[int, set[int]] = {}
    last_date: dict[int, datetime.date] = {}
    local_ids: dict[tuple[int, int], str] = {}
    counters: dict[tuple[int, str], int] = {}
    chest_studies = 0
    plans = []
    for i in range(studies):
        site_index = i % len(sites)
        profile = profile_for(site_index)
        institution = INSTITUTIONS[site_index % len(INSTITUTIONS)]
        code = institution[2]
        # Some guaranteed overlap so small runs still have a cross-site patient and a
        # patient with two studies at one site; beyond that, chance decides.
        here = [p for p, s in sites_of.items() if site_index in s]
        elsewhere = [p for p, s in sites_of.items() if site_index not in s]
        draw = rng.random()
        if (i == 1 and len(sites) > 1) or (i == len(sites) and i > 0):
            chosen = 0
        elif draw < 0.15 and here:
            chosen = here[int(rng.integers(len(here)))]
        elif draw < 0.25 and elsewhere:
            chosen = elsewhere[int(rng.integers(len(elsewhere)))]
        else:
            patient_id = _unique(rng, taken, "MRN", 8)
            patients.append(make_patient(rng, patient_id))
            chosen = len(patients) - 1
        sites_of.setdefault(chosen, set()).add(site_index)
        if (chosen, site_index) not in local_ids:
            local_ids[chosen, site_index] = _unique(rng, taken, code, 7)

        k = i // len(sites)
        ct = profile.ct_manufacturer is not None and ct_slices > 0 and k % 4 == 1
        modality = "CT" if ct else profile.chest_modality
        syntaxes = profile.ct_transfer_syntaxes if ct else profile.chest_transfer_syntaxes
        turn = counters.get((site_index, modality), 0)
        counters[site_index, modality] = turn + 1

        if chosen in last_date:
            study_date = last_date[chosen] + datetime.timedelta(days=int(rng.integers(14, 300)))
        else:
            study_date = _FIRST_DAY + datetime.timedelta(days=int(rng.integers(0, 540)))
        last_date[chosen] = study_date
        minutes = int(rng.integers(7 * 60, 19 * 60))
        study_time = datetime.time(minutes // 60, minutes % 60, int(rng.integers(60)))
        findings = {name: bool(rng.random() < rate) for name, rate in FINDING_RATES.items()}
        if not ct:
            if chest_studies < len(FINDING_RATES):
                # The first chest studies carry one finding each for sure: tiny runs
                # (tests, demos) then still hold every finding.
                findings[list(FINDING_RATES)[chest_studies]] = True
            chest_studies += 1
        accession = _unique(rng, taken, f"{code}{study_date:%y}", 6)
        plans.append(
            StudyPlan(
                uid_root=f"medai-synth/{seed}/{sites[site_index]}",
                site=sites[site_index],
                profile=profile,
                institution=institution,
                staff=staff[site_index],
                patient=patients[chosen],
                local_patient_id=local_ids[chosen, site_index],
                study_date=study_date,
                study_time=study_time,
                accession_number=accession,
                study_id=str(k + 1),
                modality=modality,
                transfer_syntax=usable_transfer_syntax(syntaxes[turn % len(syntaxes)]),
                view_position=profile.view_positions[
                    int(rng.integers(len(profile.view_positions)))
                ],
                image_seed=int(rng.integers(0, 2**31)),
                overlay=not ct and bool(rng.random() < 0.3),
                **findings,
            )
        )
    return plans


def _write(ds: Dataset, path: Path) -> None:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def generate(
    out_dir: Path,
    *,
    studies: int,
    seed: int,
    sites: Sequence[str] = ("site-a", "site-b", "site-c"),
    image_size: int = 128,
    ct_slices: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write synthetic studies, as the sites would hand them over, and their label sheets.

    Studies go to the sites in turn. Files are
    ``out_dir/<site>/<PatientID>/<AccessionNumber>/S<series>/<instance>.dcm``
    and each site's label sheet (chest studies only) is ``out_dir/labels/<site>.csv``,
    beside the image folders rather than inside them.
    The same arguments always give byte-identical files: every UID, date and pixel
    derives from ``seed``.

    Parameters
    ----------
    out_dir : Path
        Folder to write to; existing files of the same name are overwritten.
    studies : int
        Number of studies over all sites. About one site study in four is a CT series
        (at sites with a CT scanner), the others chest radiographs.
    seed : int
        Seed of everything.
    sites : Sequence[str]
        Site ids; the i-th site gets the i-th vendor profile and institution.
    image_size : int
        Rows and columns of every image.
    ct_slices : int
        Slices per CT series; 0 for no CT.
    progress : callable, optional
        Called as ``progress(done, total)`` after each study.

    Returns
    -------
    SynthResult
    """
    if studies < 0 or image_size < 16 or ct_slices < 0:
        raise ValueError("studies and ct_slices must be >= 0 and image_size >= 16")
    if not sites or len(set(sites)) != len(sites):
        raise ValueError("sites must be distinct and at least one")
    plans = _plan(studies, seed, sites, ct_slices)
    phi = PhiRecord()
    files: list[Path] = []
    records: list[SynthStudy] = []
    for done, plan in enumerate(plans, start=1):
        folder = out_dir / plan.site / plan.patient.patient_id / plan.accession_number
        written: list[Path] = []
        if plan.modality == "CT":
            for index in range(ct_slices):
                ds = ct_instance(plan, phi, size=image_size, index=index, slices=ct_slices)
                written.append(folder / "S002" / f"{index + 1}.dcm")
                _write(ds, written[-1])
        else:
            ds = chest_instance(plan, phi, image_size)
            written.append(folder / "S001" / "1.dcm")
            _write(ds, written[-1])
        files.extend(written)
        records.append(
            SynthStudy(
                site=plan.site,
                patient_id=plan.patient.patient_id,
                patient_name=plan.patient.dicom_name,
                birth_date=plan.patient.birth_date,
                study_date=plan.study_date,
                accession_number=plan.accession_number,
                study_instance_uid=str(plan.study_instance_uid),
                modality=plan.modality,
                transfer_syntax_uid=str(plan.transfer_syntax),
                nodule=plan.nodule,
                effusion=plan.effusion,
                cardiomegaly=plan.cardiomegaly,
                image_seed=plan.image_seed,
                files=tuple(written),
            )
        )
        if progress is not None:
            progress(done, len(plans))
    label_sheets = {}
    for site in sites:
        label_sheets[site] = out_dir / "labels" / f"{site}.csv"
        write_label_sheet(
            label_sheets[site], (p for p in plans if p.site == site and p.modality != "CT")
        )
    logger.info("wrote %d synthetic instances in %d studies", len(files), len(plans))
    return SynthResult(
        files=files,
        label_sheets=label_sheets,
        instances=len(files),
        studies=len(plans),
        patients=len({plan.patient.patient_id for plan in plans}),
        phi_values=phi.values,
        device_identity_values=frozenset(phi.device),
        uid_values=frozenset(phi.uids),
        phi_by_attribute={k: frozenset(v) for k, v in sorted(phi.by_attribute.items())},
        study_records=records,
        transfer_syntaxes=frozenset(r.transfer_syntax_uid for r in records),
    )


def make_ct_slice(*, rows: int = 512, columns: int = 512, seed: int = 0) -> Dataset:
    """One CT Image Storage instance (16 bits, Explicit VR Little Endian) with PHI.

    Used by benchmarks as a realistic template; ``ds.file_meta`` is set.

    Parameters
    ----------
    rows, columns : int
        Image size.
    seed : int
        Seed of the fake patient and the pixels.

    Returns
    -------
    pydicom.dataset.Dataset
    """
    rng = np.random.default_rng([seed, 3])
    profile = PROFILES[0]
    plan = StudyPlan(
        uid_root=f"medai-synth-ct/{seed}",
        site="bench",
        profile=profile,
        institution=INSTITUTIONS[0],
        staff=make_staff(rng),
        patient=make_patient(rng, f"MRN{int(rng.integers(10**7, 10**8)):08d}"),
        local_patient_id=f"SB{int(rng.integers(10**6, 10**7)):07d}",
        study_date=_FIRST_DAY + datetime.timedelta(days=int(rng.integers(0, 540))),
        study_time=datetime.time(10, 30, 0),
        accession_number=f"SB22{int(rng.integers(10**5, 10**6)):06d}",
        study_id="1",
        modality="CT",
        transfer_syntax=UID(ExplicitVRLittleEndian),
        view_position="",
        nodule=False,
        effusion=False,
        cardiomegaly=False,
        image_seed=int(rng.integers(0, 2**31)),
        overlay=False,
    )
    return ct_instance(plan, PhiRecord(), size=rows, columns=columns, index=1, slices=3)
