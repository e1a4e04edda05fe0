"""Synthetic chest CT: valid series geometry, 3-D nodules that persist and show, the CT ceiling."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from medai.dicom.series_geometry import assemble_series
from medai.dicom.synth import DIFFICULTIES, SynthResult, generate
from medai.dicom.synth.ct_volume import (
    CT_FIELD_OF_VIEW_MM,
    CT_SCAN_LENGTH_MM,
    ct_difficulty_for,
    nodule_profile,
)
from medai.dicom.synth.ideal_observer import ct_population_auroc
from tests.utils.dciodvfy import DCIODVFY, errors

SITES = ("site-a", "site-b")
SLICES, SIZE = 16, 32


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """A CT campaign: every study at the two CT sites is a 16-slice series of 32 px."""
    out = tmp_path_factory.mktemp("ct")
    return generate(
        out, studies=40, seed=5, sites=SITES, image_size=SIZE, ct_slices=SLICES, ct_every=1
    )


@pytest.fixture(scope="module")
def truth(ct: SynthResult) -> dict[str, Any]:
    assert ct.ground_truth is not None
    document: dict[str, Any] = json.loads(ct.ground_truth.read_text(encoding="utf-8"))
    return document


def _volume_hu(files: tuple[Path, ...]) -> np.ndarray:
    slices = [pydicom.dcmread(path) for path in files]
    return np.stack(
        [s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices]
    )


def test_every_study_is_a_ct_series_with_valid_geometry(ct: SynthResult) -> None:
    assert {r.modality for r in ct.study_records} == {"CT"}
    record = ct.study_records[0]
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in record.files]
    assert len(headers) == SLICES
    assert len({h.FrameOfReferenceUID for h in headers}) == 1
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    thickness = float(headers[0].SliceThickness)
    assert thickness == pytest.approx(CT_SCAN_LENGTH_MM / SLICES)
    assert [float(v) for v in headers[0].PixelSpacing] == [CT_FIELD_OF_VIEW_MM / SIZE] * 2
    # Assembled from shuffled headers: slice order by position along the normal, the
    # spacing equal to the slice thickness (contiguous slices), no slice left out.
    shuffled = list(range(SLICES))
    random.Random(3).shuffle(shuffled)
    geometry = assemble_series([headers[i] for i in shuffled])
    ordered = [shuffled[i] for i in geometry.order]
    assert geometry.slice_spacing_mm == pytest.approx(thickness)
    assert not geometry.excluded
    # Instance 1 is the apex (highest z); increasing position along the normal runs back.
    assert ordered == list(range(SLICES))[::-1]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
def test_a_ct_slice_with_a_nodule_is_valid_dicom(ct: SynthResult) -> None:
    record = next(r for r in ct.study_records if r.ct_latent and r.ct_latent.nodule)
    assert errors(record.files[SLICES // 2].read_bytes()) == []


def test_sheets_carry_the_ct_nodule_label_with_the_other_findings_blank(ct: SynthResult) -> None:
    records = {r.accession_number: r for r in ct.study_records}
    rows = []
    for site, sheet in ct.ct_label_sheets.items():
        with sheet.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                record = records[row["accession_number"]]
                assert record.site == site and row["modality"] == "CT"
                assert (row["effusion"], row["cardiomegaly"]) == ("", "")
                assert row["nodule"] == str(int(record.nodule))
                rows.append(row)
    assert len(rows) == len(ct.study_records)
    assert {row["nodule"] for row in rows} == {"0", "1"}
    # The radiograph sheets hold no CT row (there are no radiographs here).
    for sheet in ct.label_sheets.values():
        assert len(sheet.read_text(encoding="utf-8").splitlines()) == 1


def test_nodules_persist_per_patient_and_grow(ct: SynthResult, truth: dict[str, Any]) -> None:
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in truth["ct"]["studies"].values():
        by_patient[entry["patient"]].append(entry)
    followed = [studies for studies in by_patient.values() if len(studies) > 1]
    assert followed, "the campaign should follow some patient over several CTs"
    for studies in followed:
        studies.sort(key=lambda e: e["study_date"])
        assert len({e["nodule_centre_zyx"] is None for e in studies}) == 1
        if studies[0]["nodule_centre_zyx"] is not None:
            assert len({tuple(e["nodule_centre_zyx"]) for e in studies}) == 1
            assert len({e["nodule_contrast_hu"] for e in studies}) == 1
            diameters = [e["nodule_diameter_mm"] for e in studies]
            assert diameters == sorted(diameters)


def test_nodules_are_visible_in_the_pixels(ct: SynthResult) -> None:
    """Where a nodule is, the stored HU stand above the lung around it, by its contrast."""
    shown = 0
    for record in ct.study_records:
        nodule = record.ct_latent.nodule if record.ct_latent else None
        if nodule is None:
            continue
        hu = _volume_hu(record.files)
        share = nodule_profile(SLICES, SIZE, SIZE, nodule)
        core = share > 0.5 * share.max()
        z = int(np.argmax(share.max(axis=(1, 2))))
        lung = (hu[z] < -700) & (share[z] < 0.01)  # the same slice's lung, away from it
        excess = float(hu[core].mean() - hu[z][lung].mean())
        assert excess > 0.3 * nodule.contrast_hu * share.max(), (excess, nodule)
        shown += 1
    assert shown >= 3


def test_reads_follow_visibility_and_labels_carry_label_noise(truth: dict[str, Any]) -> None:
    entries = [e for e in truth["ct"]["studies"].values() if e["nodule_centre_zyx"]]
    read = [e["nodule_visibility"] for e in entries if e["read"]["nodule"]]
    missed = [e["nodule_visibility"] for e in entries if not e["read"]["nodule"]]
    assert read and np.mean(read) > (np.mean(missed) if missed else 0.0)
    nodule_free = [e for e in truth["ct"]["studies"].values() if not e["nodule_centre_zyx"]]
    assert nodule_free and not any(e["read"]["nodule"] for e in nodule_free)
    for entry in truth["ct"]["studies"].values():
        assert 0.0 <= entry["ideal_score"]["nodule"] <= 1.0


def test_ct_ceiling_is_in_a_sensible_band_and_tiny_is_exact(truth: dict[str, Any]) -> None:
    entry = truth["ct"]["findings"]["nodule"]
    assert truth["difficulty"] == "hard"
    assert 0.85 <= entry["ideal_auroc"] <= 0.95, entry["ideal_auroc"]
    assert 0.1 < entry["population_prevalence"] < 0.5
    assert set(entry["by_site"]) == set(SITES)
    assert truth["ct"]["parameters"]["name"] == "hard"
    ceilings = {
        name: ct_population_auroc(d, range(3), studies_per_site=2000)["all"]
        for name, d in DIFFICULTIES.items()
    }
    assert ceilings["hard"] < ceilings["moderate"] < ceilings["tiny"] == 1.0
    assert ct_difficulty_for(DIFFICULTIES["tiny"]).noise_hu == 0.0


def test_radiograph_campaigns_have_no_ct_section(tmp_path: Path) -> None:
    films = generate(tmp_path, studies=4, seed=1, image_size=32, ct_slices=0)
    assert films.ground_truth is not None
    assert "ct" not in json.loads(films.ground_truth.read_text(encoding="utf-8"))
    assert films.ct_label_sheets == {}


def test_synth_command_writes_a_ct_campaign(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from medai.dicom.cli import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """Keep `synth` a sub-command, as on the root app."""

    runner = CliRunner()
    assert "--ct-every" in runner.invoke(app, ["synth", "--help"]).output
    out = tmp_path / "out"
    args = ["synth", str(out), "--studies", "4", "--site", "site-a", "--size", "32"]
    ran = runner.invoke(app, [*args, "--ct-slices", "4", "--ct-every", "1", "--json"])
    assert ran.exit_code == 0, ran.output
    document = json.loads(ran.output)
    assert document["ct_label_sheets"] == {"site-a": str(out / "labels" / "site-a-ct.csv")}
    assert len(list(out.rglob("*.dcm"))) == 16  # four series of four slices
    assert runner.invoke(app, [*args, "--ct-every", "0"]).exit_code != 0
