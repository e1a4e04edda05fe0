"""Deterministic synthetic studies per site: chest radiographs with findings, CT, planted PHI."""

from medai.dicom.synth.images import render_chest
from medai.dicom.synth.labels import LABEL_COLUMNS
from medai.dicom.synth.profiles import PROFILES, SiteProfile
from medai.dicom.synth.studies import SynthResult, SynthStudy, generate, make_ct_slice

__all__ = [
    "LABEL_COLUMNS",
    "PROFILES",
    "SiteProfile",
    "SynthResult",
    "SynthStudy",
    "generate",
    "make_ct_slice",
    "render_chest",
]
