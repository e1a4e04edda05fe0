"""Helpers of the edge tests: synthetic instances ingested into an edge home."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import generate_uid

from medai.collection.outcomes import Offer
from medai.collection.pipeline import IngestPipeline
from medai.config import Settings
from medai.dicom.synth import make_ct_slice
from tests.utils.campaign import dataset_bytes


def ct_instances(count: int, *, tag: str = "", studies: int = 2) -> list[bytes]:
    """``count`` small identified CT slices (64x64) over ``studies`` studies, as a PACS sends."""
    template = make_ct_slice(rows=64, columns=64, seed=7)
    blobs = []
    for index in range(count):
        ds = template.copy()
        study = index % studies
        ds.PatientID = f"EDGE{tag}{study:03d}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[tag, "study", str(study)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, "series", str(study)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, "sop", str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        blobs.append(dataset_bytes(ds))
    return blobs


def ct_files(folder: Path, count: int, *, tag: str = "", studies: int = 2) -> list[Path]:
    """:func:`ct_instances` written to ``folder`` as files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, data in enumerate(ct_instances(count, tag=tag, studies=studies)):
        path = folder / f"{tag}{index:04d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def ingest(settings: Settings, blobs: list[bytes], site: str = "site-a") -> list[str]:
    """Run ``blobs`` through the ingest pipeline of ``settings``; the outcome kinds."""
    pipeline = IngestPipeline.from_settings(settings)
    try:
        outcomes = pipeline.ingest_many([Offer(data=b, site=site, source="test") for b in blobs])
    finally:
        pipeline.engine.dispose()
    return [o.kind for o in outcomes]
