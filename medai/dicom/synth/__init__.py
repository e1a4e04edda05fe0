"""Deterministic synthetic studies per site (planted PHI) and small standard-valid instances."""

from medai.dicom.synth.difficulty import DIFFICULTIES, Difficulty, difficulty_for
from medai.dicom.synth.images import Acquisition, draw_chest, render_chest
from medai.dicom.synth.labels import LABEL_COLUMNS
from medai.dicom.synth.modalities import make_cr, make_dx, make_enhanced_mr, make_mr
from medai.dicom.synth.profiles import PROFILES, SiteProfile
from medai.dicom.synth.studies import SynthResult, SynthStudy, generate, make_ct_slice

__all__ = [
    "DIFFICULTIES",
    "Acquisition",
    "Difficulty",
    "difficulty_for",
    "draw_chest",
    "LABEL_COLUMNS",
    "PROFILES",
    "SiteProfile",
    "SynthResult",
    "SynthStudy",
    "generate",
    "make_cr",
    "make_ct_slice",
    "make_dx",
    "make_enhanced_mr",
    "make_mr",
    "render_chest",
]
