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

from medai.dicom.synth.ct_volume import (
    CtLatent,
    ct_difficulty_for,
    ct_nodule,
    ct_study_latent,
    make_ct_evident,
    render_ct_volume,
)
from medai.dicom.synth.datasets import (
    StudyPlan,
    chest_instance,
    ct_instance,
    usable_transfer_syntax,
)
from medai.dicom.synth.difficulty import Difficulty, difficulty_for
from medai.dicom.synth.ideal_observer import (
    CtGroundTruthStudy,
    GroundTruthStudy,
    write_ground_truth,
)
from medai.dicom.synth.labels import write_label_sheet
from medai.dicom.synth.latent import (
    FINDINGS,
    ChestLatent,
    PatientState,
    advance,
    first_state,
    make_evident,
    sheet_label,
    study_latent,
)
from medai.dicom.synth.phi import FakePatient, PhiRecord, make_patient, make_staff
from medai.dicom.synth.profiles import INSTITUTIONS, PROFILES, profile_for

__all__ = ["SynthResult", "SynthStudy", "generate", "make_ct_slice"]

logger = logging.getLogger(__name__)

_FIRST_DAY = datetime.date(2022, 1, 3)


@dataclass(frozen=True)
class SynthStudy:
    """What was generated for one study (original, identifying values).

    ``nodule``, ``effusion`` and ``cardiomegaly`` are what the site's label sheet says (the
    radiologist's read after the site's label noise); ``latent`` is the truth the film was
    drawn from (``None`` for CT). For a CT study ``nodule`` is the CT sheet's label and
    ``ct_latent`` the nodule the series was drawn from (with the read).
    """

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
    latent: ChestLatent | None = None
    ct_latent: CtLatent | None = None


@dataclass(frozen=True)
class SynthResult:
    """The files written by :func:`generate` and everything tests need to check them.

    ``phi_values`` holds every distinctive identifying string planted (names, IDs,
    addresses, telephone numbers, institution, free text, private elements), none of
    which may survive de-identification. ``device_identity_values`` (station names,
    device serial numbers) are kept apart: the Retain Device Identity option keeps
    them. ``uid_values`` are the original Study, Series, SOP Instance and Frame of
    Reference UIDs. Dates are in ``study_records``. ``ground_truth`` is the JSON file
    of the ideal observer's AUROC per finding and every chest study's latent values
    (see :mod:`medai.dicom.synth.ideal_observer`); its ``ct`` section holds the same for
    the CT nodule, whose labels are in ``ct_label_sheets`` (one sheet per site with CT).
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
    ground_truth: Path | None = None
    difficulty: str = "hard"
    ct_label_sheets: dict[str, Path] = field(default_factory=dict)


def _unique(rng: np.random.Generator, taken: set[str], prefix: str, digits: int) -> str:
    """``prefix`` and ``digits`` random digits, not yet in ``taken`` (added to it)."""
    while True:
        value = f"{prefix}{int(rng.integers(0, 10**digits)):0{digits}d}"
        if value not in taken:
            taken.add(value)
            return value


def _findings(
    seed: int,
    difficulty: Difficulty,
    states: dict[int, PatientState],
    patient: int,
    years: float | None,
    site_index: int,
    study: int,
) -> PatientState:
    """The patient's state at this study: new, or the last one ``years`` on."""
    # Own generators per patient and per study, so the findings never shift the IDs,
    # dates and UIDs drawn from the planner's generator.
    if years is None:
        state = first_state(np.random.default_rng([seed, 10, patient]), difficulty, site_index)
    else:
        rng = np.random.default_rng([seed, 11, study])
        state = advance(rng, difficulty, states[patient], years)
    states[patient] = state
    return state


def _ct_findings(
    seed: int,
    difficulty: Difficulty,
    state: PatientState,
    patient: int,
    study: int,
    site_index: int,
    evident: bool,
) -> tuple[CtLatent, bool]:
    """The CT latent of this study of ``patient`` and the sheet's ``nodule`` label."""
    ct = ct_difficulty_for(difficulty)
    nodule = ct_nodule(np.random.default_rng([seed, 14, patient]), ct, state.nodule)
    if evident:
        # Every CT of the patient shows it, but their state (hence their films) is unchanged.
        nodule = make_ct_evident(ct, nodule)
    rng = np.random.default_rng([seed, 13, study])
    latent = ct_study_latent(rng, ct, nodule)
    return latent, evident or sheet_label(rng, difficulty, latent.read, site_index)


def _plan(
    studies: int,
    seed: int,
    sites: Sequence[str],
    ct_slices: int,
    difficulty: Difficulty,
    ct_every: int = 4,
) -> tuple[list[StudyPlan], list[GroundTruthStudy], list[CtGroundTruthStudy]]:
    rng = np.random.default_rng([seed, 1])
    staff = [make_staff(np.random.default_rng([seed, 2, i])) for i in range(len(sites))]
    taken: set[str] = set()
    patients: list[FakePatient] = []
    sites_of: dict[int, set[int]] = {}
    last_date: dict[int, datetime.date] = {}
    local_ids: dict[tuple[int, int], str] = {}
    counters: dict[tuple[int, str], int] = {}
    chest_studies = 0
    evident_ct: set[int] = set()  # patients whose CTs show an evident nodule
    plans = []
    truths: list[GroundTruthStudy] = []
    ct_truths: list[CtGroundTruthStudy] = []
    states: dict[int, PatientState] = {}
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
        ct = profile.ct_manufacturer is not None and ct_slices > 0 and k % ct_every == 1 % ct_every
        modality = "CT" if ct else profile.chest_modality
        syntaxes = profile.ct_transfer_syntaxes if ct else profile.chest_transfer_syntaxes
        turn = counters.get((site_index, modality), 0)
        counters[site_index, modality] = turn + 1

        years: float | None = None
        if chosen in last_date:
            study_date = last_date[chosen] + datetime.timedelta(days=int(rng.integers(14, 300)))
            years = (study_date - last_date[chosen]).days / 365.25
        else:
            study_date = _FIRST_DAY + datetime.timedelta(days=int(rng.integers(0, 540)))
        last_date[chosen] = study_date
        state = _findings(seed, difficulty, states, chosen, years, site_index, i)
        minutes = int(rng.integers(7 * 60, 19 * 60))
        study_time = datetime.time(minutes // 60, minutes % 60, int(rng.integers(60)))
        rng.random(len(FINDINGS))  # where findings were drawn once: a seed keeps its IDs
        findings = dict.fromkeys(FINDINGS, False)
        latent = None
        ct_latent = None
        if ct:
            if not evident_ct:
                evident_ct.add(chosen)  # the campaign's first CT
            ct_latent, findings["nodule"] = _ct_findings(
                seed, difficulty, state, chosen, i, site_index, evident=chosen in evident_ct
            )
        else:
            forced = FINDINGS[chest_studies] if chest_studies < len(FINDINGS) else None
            if forced is not None:
                # The first chest studies carry one evident finding each: tiny runs
                # (tests, demos) then still hold every finding, in the sheet too.
                state = make_evident(difficulty, state, forced)
                states[chosen] = state
            study_rng = np.random.default_rng([seed, 12, i])
            latent = study_latent(study_rng, difficulty, state, site_index)
            for name in FINDINGS:
                findings[name] = name == forced or sheet_label(
                    study_rng, difficulty, latent.read[name], site_index
                )
            chest_studies += 1
        accession = _unique(rng, taken, f"{code}{study_date:%y}", 6)
        # A chest film's view comes with the patient (portable AP films for the sick);
        # the draw stays so that a seed keeps its other values.
        view = profile.view_positions[int(rng.integers(len(profile.view_positions)))]
        if latent is not None:
            view = latent.view
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
                view_position=view,
                image_seed=int(rng.integers(0, 2**31)),
                overlay=not ct and bool(rng.random() < 0.3),
                latent=latent,
                ct_latent=ct_latent,
                **findings,
            )
        )
        if ct_latent is not None:
            ct_truths.append(
                CtGroundTruthStudy(
                    study_instance_uid=str(plans[-1].study_instance_uid),
                    patient=f"P{chosen:05d}",
                    site=sites[site_index],
                    site_index=site_index,
                    study_date=study_date,
                    latent=ct_latent,
                    label=findings["nodule"],
                )
            )
        if latent is not None:
            truths.append(
                GroundTruthStudy(
                    study_instance_uid=str(plans[-1].study_instance_uid),
                    patient=f"P{chosen:05d}",
                    site=sites[site_index],
                    site_index=site_index,
                    study_date=study_date,
                    latent=latent,
                    labels=findings,
                )
            )
    return plans, truths, ct_truths


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
    difficulty: str | Difficulty = "hard",
    ct_every: int = 4,
) -> SynthResult:
    """Write synthetic studies, as the sites would hand them over, and their label sheets.

    Studies go to the sites in turn. Files are
    ``out_dir/<site>/<PatientID>/<AccessionNumber>/S<series>/<instance>.dcm``
    and each site's label sheet (chest studies only) is ``out_dir/labels/<site>.csv``,
    beside the image folders rather than inside them, with the campaign's ground truth
    ``out_dir/labels/ground_truth.json``: the ideal observer's AUROC per finding (the
    ceiling a model is measured against), prevalence and label-noise rates per site,
    and every chest study's latent values keyed by its original StudyInstanceUID.
    A patient's anatomy and findings carry over from study to study; the sheets hold the
    radiologists' reads with each site's label noise (see
    :mod:`medai.dicom.synth.difficulty`).
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
        Slices per CT series; 0 for no CT. A series is an axial chest CT (Rows and Columns
        ``image_size``, 400 mm field of view, 300 mm scan length) with the patient's nodule,
        if any, as a 3-D lesion (see :mod:`medai.dicom.synth.ct_volume`); its label is in
        ``out_dir/labels/<site>-ct.csv`` (``nodule`` only) and its ceiling in the ground
        truth's ``ct`` section.
    progress : callable, optional
        Called as ``progress(done, total)`` after each study.
    difficulty : str or Difficulty
        ``"hard"`` (default), ``"moderate"``, ``"tiny"`` (for 32-48 px images) or a
        :class:`~medai.dicom.synth.difficulty.Difficulty` of one's own.
    ct_every : int
        At a site with a CT scanner, one study in ``ct_every`` is a CT (the second, then
        every ``ct_every``-th); 1 makes every study there a CT (a CT campaign).

    Returns
    -------
    SynthResult
    """
    if studies < 0 or image_size < 16 or ct_slices < 0 or ct_every < 1:
        raise ValueError("studies and ct_slices must be >= 0, image_size >= 16 and ct_every >= 1")
    if not sites or len(set(sites)) != len(sites):
        raise ValueError("sites must be distinct and at least one")
    chosen = difficulty_for(difficulty) if isinstance(difficulty, str) else difficulty
    plans, truths, ct_truths = _plan(studies, seed, sites, ct_slices, chosen, ct_every)
    ct_difficulty = ct_difficulty_for(chosen)
    phi = PhiRecord()
    files: list[Path] = []
    records: list[SynthStudy] = []
    for done, plan in enumerate(plans, start=1):
        folder = out_dir / plan.site / plan.patient.patient_id / plan.accession_number
        written: list[Path] = []
        if plan.modality == "CT":
            nodule = plan.ct_latent.nodule if plan.ct_latent is not None else None
            volume = render_ct_volume(
                ct_slices, image_size, image_size, seed=plan.image_seed, nodule=nodule,
                ct=ct_difficulty,
            )  # fmt: skip
            for index in range(ct_slices):
                ds = ct_instance(
                    plan, phi, size=image_size, index=index, slices=ct_slices, hu=volume[index]
                )
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
                latent=plan.latent,
                ct_latent=plan.ct_latent,
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
    ct_label_sheets = {}
    for site in sites:
        ct_plans = [p for p in plans if p.site == site and p.modality == "CT"]
        if ct_plans:
            ct_label_sheets[site] = out_dir / "labels" / f"{site}-ct.csv"
            write_label_sheet(ct_label_sheets[site], ct_plans)
    ground_truth = out_dir / "labels" / "ground_truth.json"
    write_ground_truth(ground_truth, chosen, sites, truths, ct_studies=ct_truths)
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
        ground_truth=ground_truth,
        difficulty=chosen.name,
        ct_label_sheets=ct_label_sheets,
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
