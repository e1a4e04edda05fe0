"""Per-site vendor profiles: what differs between the hospitals' modalities and PACS."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from medai.dicom.synth.images import Acquisition

__all__ = ["INSTITUTIONS", "PROFILES", "SiteProfile", "profile_for"]


@dataclass(frozen=True)
class SiteProfile:
    """The modalities and habits of one site.

    ``chest_transfer_syntaxes`` and ``ct_transfer_syntaxes`` are used in turn, study
    after study, so each site hands over a mix. ``ct_manufacturer`` is ``None`` for
    a site without a CT scanner. ``acquisition`` is how its chest detector renders a
    film (noise, contrast curve, resolution): a model that sees one site only meets
    another detector at the next. Which films are portable AP ones is decided by the
    campaign's difficulty (:mod:`medai.dicom.synth.difficulty`: portable films follow
    the patients, not the vendor); ``view_positions`` lists the spellings of the views.
    """

    chest_modality: str  # "CR" or "DX"
    chest_manufacturer: str
    chest_model: str
    body_part: str  # the site's spelling of the chest
    view_positions: tuple[str, ...]
    chest_bits_stored: int
    chest_transfer_syntaxes: tuple[UID, ...]
    ct_manufacturer: str | None
    ct_model: str
    ct_body_part: str
    ct_bits_stored: int
    ct_rescale_intercept: int
    ct_transfer_syntaxes: tuple[UID, ...]
    acquisition: Acquisition = Acquisition()


PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        chest_modality="CR",
        chest_manufacturer="FUJIFILM Corporation",
        chest_model="FCR PROFECT CS",
        body_part="CHEST",
        view_positions=("PA", "PA", "AP"),
        chest_bits_stored=12,
        chest_transfer_syntaxes=(ExplicitVRLittleEndian, RLELossless),
        ct_manufacturer="GE MEDICAL SYSTEMS",
        ct_model="Revolution CT",
        ct_body_part="CHEST",
        ct_bits_stored=16,
        ct_rescale_intercept=-1024,
        ct_transfer_syntaxes=(ImplicitVRLittleEndian,),
        acquisition=Acquisition(noise=0.02, gamma=1.0, blur=1.0),
    ),
    SiteProfile(
        chest_modality="DX",
        chest_manufacturer="SIEMENS",
        chest_model="Ysio Max",
        body_part="Chest",
        view_positions=("PA", "AP"),
        chest_bits_stored=12,
        chest_transfer_syntaxes=(JPEG2000Lossless, ExplicitVRLittleEndian),
        ct_manufacturer="Siemens Healthineers",
        ct_model="SOMATOM go.Up",
        ct_body_part="THORAX",
        ct_bits_stored=12,
        ct_rescale_intercept=-1024,
        ct_transfer_syntaxes=(ExplicitVRLittleEndian, RLELossless),
        acquisition=Acquisition(noise=0.012, gamma=0.85, blur=0.7),
    ),
    SiteProfile(
        chest_modality="DX",
        chest_manufacturer="Philips Medical Systems",
        chest_model="DigitalDiagnost",
        body_part="THORAX",
        view_positions=("PA",),
        chest_bits_stored=12,
        chest_transfer_syntaxes=(DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian),
        ct_manufacturer=None,
        ct_model="",
        ct_body_part="",
        ct_bits_stored=16,
        ct_rescale_intercept=0,
        ct_transfer_syntaxes=(ExplicitVRLittleEndian,),
        acquisition=Acquisition(noise=0.03, gamma=1.2, blur=1.8),
    ),
    SiteProfile(
        chest_modality="CR",
        chest_manufacturer="Agfa-Gevaert",
        chest_model="CR 30-X",
        body_part="TORAX",
        view_positions=("PA", "AP"),
        chest_bits_stored=12,
        chest_transfer_syntaxes=(RLELossless, DeflatedExplicitVRLittleEndian),
        ct_manufacturer="TOSHIBA",
        ct_model="Aquilion ONE",
        ct_body_part="Chest",
        ct_bits_stored=16,
        ct_rescale_intercept=0,
        ct_transfer_syntaxes=(JPEG2000Lossless,),
        acquisition=Acquisition(noise=0.025, gamma=1.1, blur=1.3),
    ),
)

# (name, address, short code used in IDs and issuer names), one per site in turn.
INSTITUTIONS: tuple[tuple[str, str, str], ...] = (
    ("St Brigid Regional Hospital", "14 Harbour Road, Lakeford 31", "SB"),
    ("Kestrel Valley Medical Centre", "2 Infirmary Square, Kestrel Valley 08", "KV"),
    ("Ardmore Cross University Hospital", "400 College Avenue, Ardmore Cross 17", "AC"),
    ("Millhaven General Infirmary", "9 Weaver Street, Millhaven 52", "MG"),
)


def profile_for(site_index: int) -> SiteProfile:
    """The vendor profile of the ``site_index``-th site (profiles repeat after four)."""
    return PROFILES[site_index % len(PROFILES)]
