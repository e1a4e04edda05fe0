"""What the IODs medai stores require beyond PS3.15 Table E.1-1, reviewed one attribute at a time.

Table E.1-1 names the attributes that may identify someone; medai removes every other text
attribute too unless it is known to be safe (``table.SAFE_TEXT_KEYWORDS``), because unknown free
text could carry PHI. Some of those attributes are Type 1 or Type 2 in the IODs medai stores
(CT, MR, enhanced MR, DX, CR, and the modules they share: General Series, Frame of Reference,
General Equipment, Image Plane and Pixel, Modality and VOI LUT, the MR and CT image modules,
the multi-frame functional groups); removing them leaves invalid DICOM. This module lists them
with their type (the strictest over those IODs, from PS3.3 and checked with dicom3tools'
``dciodvfy``), so that each exception to the safety rule is explicit and reviewed:

* ``keep``: a defined term or a label written by the modality (``ModalityLUTType`` "HU",
  ``PulseSequenceName`` "tfl3d1", ``StackID`` "1"): it says nothing about anyone; kept verbatim.
* ``clean``: free text a person may have typed: cleaned under Clean Descriptors; otherwise,
  and whenever cleaning leaves nothing, emptied (Type 2 and 3) or given a dummy (Type 1).

It also lists the dates outside Table E.1-1 that are about no patient or procedure (versions
of coding resources), kept as they are; how sequence items that lost their content are
recognised (an HL7v2 hierarchic designator with neither of its identifiers); and the sequences
that stay, with no items, when every item went (Type 1 and 2; a Type 3 one is removed).
Lookups are by tag, in sets and dicts built once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import tag_for_keyword

__all__ = [
    "KEPT_WHEN_EMPTIED",
    "REQUIRED_DATES",
    "REQUIRED_TEXT",
    "UNSHIFTED_DATES",
    "Requirement",
    "item_content",
    "kept_when_emptied",
    "tags_of",
    "type1_text_to_fill",
]


@dataclass(frozen=True)
class Requirement:
    """One attribute outside Table E.1-1 that an IOD medai stores requires.

    ``type`` is the strictest type over the modules named in ``where`` ("1", "1C", "2",
    "2C"); ``treatment`` is "keep" (verbatim) or "clean" (free text, see the module notes).
    """

    keyword: str
    type: str
    treatment: str
    where: str

    @property
    def type1(self) -> bool:
        """Whether the attribute must hold a value (Type 1 or 1C)."""
        return self.type.startswith("1")


REQUIRED_TEXT: tuple[Requirement, ...] = (
    Requirement("PositionReferenceIndicator", "2", "clean", "Frame of Reference"),
    Requirement("ModalityLUTType", "1", "keep", "Modality LUT (Modality LUT Sequence item)"),
    Requirement("LUTExplanation", "1", "clean", "Real World Value Mapping item; VOI/Modality LUT"),
    Requirement("LUTLabel", "1", "keep", "Real World Value Mapping item"),
    Requirement("StackID", "1C", "keep", "Frame Content functional group"),
    Requirement("PulseSequenceName", "1C", "keep", "MR Pulse Sequence"),
    Requirement("ReceiveCoilManufacturerName", "2", "keep", "MR Receive Coil functional group"),
    Requirement("TransmitCoilManufacturerName", "2", "keep", "MR Transmit Coil functional group"),
    Requirement("MultiCoilElementName", "1C", "keep", "MR Receive Coil (multi-coil definition)"),
    Requirement("FilterType", "1C", "keep", "CT X-Ray Details functional group; CT/DX image"),
    Requirement("ImageFilter", "1C", "keep", "CT Reconstruction functional group"),
)
"""Text attributes (AE AS LO LT PN SH ST UC UR UT) outside Table E.1-1 that an IOD requires."""

REQUIRED_DATES: tuple[Requirement, ...] = (
    Requirement("FrameAcquisitionDateTime", "1C", "clean", "Frame Content functional group"),
    Requirement("FrameReferenceDateTime", "1C", "clean", "Frame Content functional group"),
)
"""Dates outside Table E.1-1 about the procedure that an IOD requires: shifted with the other
dates under Retain Longitudinal (Modified Dates), otherwise a dummy (Type 1) or emptied."""

UNSHIFTED_DATES: Mapping[str, str] = {
    "ContextGroupVersion": "the version of a DCMR context group (Code Sequence macro)",
    "ContextGroupLocalVersion": "the local version of an extended context group",
}
"""Dates outside Table E.1-1 that are about no patient and no procedure: kept unchanged.

Every other date outside the table is treated as a procedure date (shifted, or removed without
the Retain Longitudinal option): InstanceCreationDate, FrameAcquisitionDateTime,
DateOfSecondaryCapture and the like are about the procedure, and equipment dates
(DateOfLastCalibration, DateOfInstallation) bound the acquisition date, so that keeping them
would reveal the patient's date offset.
"""

_HL7V2_DESIGNATOR = frozenset({"LocalNamespaceEntityID", "UniversalEntityID"})
_ITEM_CONTENT: Mapping[str, frozenset[str]] = {
    # HL7v2 Hierarchic Designator macro: one of the two identifiers, or no designator at all.
    "IssuerOfAccessionNumberSequence": _HL7V2_DESIGNATOR,
    "AssigningFacilitySequence": _HL7V2_DESIGNATOR,
    "IssuerOfAdmissionIDSequence": _HL7V2_DESIGNATOR,
    "IssuerOfServiceEpisodeIDSequence": _HL7V2_DESIGNATOR,
    "IssuerOfTheContainerIdentifierSequence": _HL7V2_DESIGNATOR,
    "IssuerOfTheSpecimenIdentifierSequence": _HL7V2_DESIGNATOR,
}

KEPT_WHEN_EMPTIED = frozenset(
    {
        # Type 2 in the IODs medai stores: present, possibly with no item.
        "AnatomicRegionSequence",
        "AcquisitionContextSequence",
        # Type 1: an empty one is as invalid as a missing one; kept to show what was there.
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "DimensionOrganizationSequence",
        "RealWorldValueMappingSequence",
        "MeasurementUnitsCodeSequence",
        "ConceptNameCodeSequence",
        "FrameAnatomySequence",
        "FrameContentSequence",
    }
)
"""Sequences that stay, with zero items, once de-identification has removed every item."""


def tags_of(keywords: Iterable[str]) -> frozenset[int]:
    """The tags of ``keywords``; an unknown keyword is an error."""
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        tags.add(tag)
    return frozenset(tags)


@lru_cache(maxsize=1)
def item_content() -> dict[int, frozenset[int]]:
    """Sequence tag -> tags of which an item must keep one, else the item is removed."""
    return {next(iter(tags_of([seq]))): tags_of(need) for seq, need in _ITEM_CONTENT.items()}


@lru_cache(maxsize=1)
def kept_when_emptied() -> frozenset[int]:
    """Tags of :data:`KEPT_WHEN_EMPTIED`."""
    return tags_of(KEPT_WHEN_EMPTIED)


@lru_cache(maxsize=1)
def type1_text_to_fill() -> frozenset[int]:
    """Tags of Type 1 "clean" text attributes: a dummy replaces a value cleaned to nothing."""
    return tags_of(r.keyword for r in REQUIRED_TEXT if r.treatment == "clean" and r.type1)
