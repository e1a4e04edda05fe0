"""De-identification by DICOM PS3.15 Annex E (Basic Profile, campaign options, keep-list)."""

from medai.collection.deid.deidentifier import Deidentifier
from medai.collection.deid.table import DeidOptions

__all__ = ["DeidOptions", "Deidentifier"]
