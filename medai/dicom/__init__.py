"""DICOM knowledge shared by all parts: read and validate, normalized metadata, synthetic studies.

Names are imported on first use, so that importing ``medai.dicom.cli`` (for
``medai --help``) does not load pydicom and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medai.lazy import lazy_exports

if TYPE_CHECKING:
    from medai.dicom.metadata import InstanceMetadata, normalized_metadata
    from medai.dicom.read import parse_instance
    from medai.dicom.synth import SynthResult, generate, make_ct_slice

__all__ = [
    "InstanceMetadata",
    "SynthResult",
    "generate",
    "make_ct_slice",
    "normalized_metadata",
    "parse_instance",
]

_MODULES = {
    "InstanceMetadata": "medai.dicom.metadata",
    "normalized_metadata": "medai.dicom.metadata",
    "parse_instance": "medai.dicom.read",
    "SynthResult": "medai.dicom.synth",
    "generate": "medai.dicom.synth",
    "make_ct_slice": "medai.dicom.synth",
}


__getattr__ = lazy_exports(__name__, _MODULES)
