"""Narrative text fields: removed under cleaning unless the campaign keeps them explicitly.

A description ("CT THORAX W/O CONTRAST") is mostly vocabulary and survives the allow-list
of :mod:`medai.collection.deid.descriptors`; a narrative ("Pat. Mueller, wife called...") is
mostly not, and what would survive of it is word salad that can still say something about
someone. So a field the Annex E table cleans ("C") is removed whole when it is narrative:
every long text (LT, ST, UT, UC) and the short fields that describe the patient rather than
the procedure (history, allergies, reasons, diagnoses). A campaign that needs one lists it
in ``keep_narrative``; it is then allow-list cleaned like a description. None of these is
Type 1 or 2 in the image IODs medai stores (SR documents, whose TextValue is narrative by
design, are refused before de-identification).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

__all__ = ["NARRATIVE_VRS", "PATIENT_NARRATIVE_KEYWORDS", "kept_narrative_tags", "removes"]

NARRATIVE_VRS = frozenset({"LT", "ST", "UT", "UC"})
"""Long text VRs: narrative whatever the attribute."""

PATIENT_NARRATIVE_KEYWORDS = frozenset(
    {
        "AdmittingDiagnosesDescription",
        "Allergies",
        "DischargeDiagnosisDescription",
        "MedicalAlerts",
        "Occupation",
        "PatientState",
        "PreMedication",
        "ReasonForStudy",
        "ReasonForTheImagingServiceRequest",
        "ReasonForTheRequestedProcedure",
        "ServiceEpisodeDescription",
        "SpecialNeeds",
    }
)
"""Short (LO, SH) attributes cleaned by Annex E that are about the patient, not the study."""


@lru_cache(maxsize=1)
def _patient_narrative_tags() -> frozenset[int]:
    from pydicom.datadict import tag_for_keyword

    return frozenset(int(tag_for_keyword(k) or 0) for k in PATIENT_NARRATIVE_KEYWORDS)


def kept_narrative_tags(keywords: Iterable[str]) -> frozenset[int]:
    """The tags of the narrative attributes a campaign keeps (``keep_narrative``).

    Parameters
    ----------
    keywords
        DICOM keywords, e.g. ``["ImageComments"]``.

    Returns
    -------
    frozenset of int

    Raises
    ------
    ValueError
        If a keyword is not a DICOM keyword.
    """
    from pydicom.datadict import tag_for_keyword

    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        tags.add(int(tag))
    return frozenset(tags)


def removes(tag: int, vr: str, kept: frozenset[int]) -> bool:
    """Whether a text element that the table cleans is removed as narrative instead.

    Parameters
    ----------
    tag, vr
        The element.
    kept
        :func:`kept_narrative_tags` of the campaign.
    """
    return (vr in NARRATIVE_VRS or tag in _patient_narrative_tags()) and tag not in kept
