"""The centre's re-screen of instances an edge gateway de-identified on site.

An edge de-identifies with the campaign's rules and key, so the centre must not do it
again (the UIDs would change, and the pseudonymized UIDs are the instances' identity). It
checks instead that each instance looks exactly like medai's own output, and quarantines
anything else with a reason code:

``edge-not-deidentified`` (:class:`~medai.errors.EdgeNotDeidentified`)
    The markers are missing: PatientIdentityRemoved is not YES, DeidentificationMethod is
    not the stamp this campaign's options write, or a UID that de-identification replaces
    is not of the form ``2.25.<decimal>`` (the Study, Series and SOP Instance UIDs first).

``edge-identified`` (:class:`~medai.errors.EdgeIdentified`)
    The markers are there but something de-identification removes or replaces is too:
    an attribute the Annex E action table removes (X) still present, one it empties (Z)
    holding a value, a dummy (D) that is not medai's dummy, a private element the
    campaign does not keep, a person name other than the pseudonym forms medai writes,
    free text that the allow-list cleaner would change, narrative text that is removed,
    an age that is more than an age, file meta that names the sender, or an object whose
    pixels may show text (:func:`~medai.collection.deid.pixels.screen_object`) or still
    carry overlay bits.

The walk follows the same action table (:func:`~medai.collection.deid.table.action_table`)
as :class:`~medai.collection.deid.Deidentifier`, so the two cannot drift apart: what the
Deidentifier writes passes, and the tests check that on synthetic instances. Dates
cannot be checked (the shift is keyed on the original PatientID, which the centre never
sees); every other value de-identification touches can. The reasons name attributes by
keyword (or tag, for private ones), never a value from the file.
"""

from __future__ import annotations

import re
from typing import Final

from pydicom import Dataset
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from medai.collection.deid import narrative
from medai.collection.deid.deidentifier import IMPLEMENTATION_CLASS_UID
from medai.collection.deid.descriptors import DescriptorCleaner, clean_age, cleaner_for
from medai.collection.deid.iod_requirements import type1_text_to_fill
from medai.collection.deid.pixels import clear_overlay_bits, screen_object
from medai.collection.deid.table import DeidOptions, action_table, identity_elements
from medai.collection.deid.vocabulary import load_vocabulary
from medai.errors import EdgeIdentified, EdgeNotDeidentified, Rejected

__all__ = ["EdgeScreen"]

_PATIENT_ID: Final = 0x00100020
_PATIENT_NAME: Final = 0x00100010
_IDENTITY_REMOVED: Final = 0x00120062
_METHOD: Final = 0x00120063
_METHOD_CODES: Final = 0x00120064
_TEMPORAL: Final = 0x00280303
_STAMP: Final = frozenset({_IDENTITY_REMOVED, _METHOD, _METHOD_CODES, _TEMPORAL})
_INSTANCE_UIDS: Final = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
_PSEUDO_UID: Final = re.compile(r"2\.25\.(0|[1-9][0-9]{0,38})")
# Patient.pseudonym: "P" and 16 base32 characters (Pseudonymizer.patient_pseudonym).
_PSEUDONYM: Final = re.compile(r"P[A-Z2-7]{16}")
_DUMMY_TEXT: Final = "ANONYMIZED"  # the Deidentifier's dummy (D) for text
_DUMMY_DATES: Final = {"DA": "19000101", "DT": "19000101000000"}
_TEXT_VRS: Final = frozenset({"AE", "AS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_DATE_VRS: Final = frozenset({"DA", "DT"})
# The file meta the Deidentifier keeps (the rest names the sender: AE titles, private meta).
_FILE_META_KEPT: Final = frozenset(
    {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
)
_SHOWN: Final = 5  # attributes named in a reason, at most


def _name(tag: int) -> str:
    """How a reason names an attribute: its keyword, else its tag (never its value)."""
    keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip(" \x00") for v in value]
    return [str(value).strip(" \x00")]


def _vr(tag: int, vr: str | None) -> str:
    if vr is None or vr == "UN":
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return vr or "UN"
    return vr


class EdgeScreen:
    """Checks that an instance is medai's de-identified output under ``options``.

    Parameters
    ----------
    options
        The campaign's de-identification options (the edge de-identified with the same).
    """

    def __init__(self, options: DeidOptions) -> None:
        self.options = options
        self._table = action_table(options)
        stamp = {int(elem.tag): elem for elem in identity_elements(options)}
        self._method = _values(stamp[_METHOD].value)
        self._codes = sorted(str(item.CodeValue) for item in stamp[_METHOD_CODES].value)
        self._fill = type1_text_to_fill()
        self._kept_narrative = narrative.kept_narrative_tags(options.keep_narrative)
        # Cleaning what medai wrote changes nothing: no identifying values are known here
        # (they were removed at the edge), so the allow-list alone decides.
        self._cleaner: DescriptorCleaner = cleaner_for(
            frozenset(), load_vocabulary(options.extra_vocabulary)
        )

    def screen(self, ds: Dataset) -> None:
        """Raise unless ``ds`` (a parsed instance, with its file meta) passes.

        ``ds`` may be changed (elements decoded); store the bytes as received, not ``ds``.

        Raises
        ------
        EdgeNotDeidentified
            The de-identification markers are missing or wrong.
        EdgeIdentified
            Something de-identification removes or replaces is still there.
        """
        self._markers(ds)
        try:
            screen_object(ds)
            if clear_overlay_bits(ds):
                raise EdgeIdentified(
                    "the pixel data still carries overlay bits above HighBit, which "
                    "de-identification clears (they may draw text on the image)"
                )
        except EdgeIdentified:
            raise
        except Rejected as exc:  # burned-in text, an object with free text, undecodable
            raise EdgeIdentified(
                f"the edge sent an instance medai would not accept ({exc.reason_code}): {exc}"
            ) from None
        problems: list[str] = []
        self._file_meta(ds, problems)
        self._walk(ds, problems, top=True)
        if problems:
            shown = ", ".join(problems[:_SHOWN])
            more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
            raise EdgeIdentified(
                f"the instance still looks identified: {shown}{more}; the edge must "
                "de-identify with the campaign's rules (check its medai version and campaign)"
            )

    # -- markers ------------------------------------------------------------------------

    def _markers(self, ds: Dataset) -> None:
        missing: list[str] = []
        if _values(ds.get("PatientIdentityRemoved")) != ["YES"]:
            missing.append("PatientIdentityRemoved is not YES")
        if _values(ds.get("DeidentificationMethod")) != self._method:
            missing.append("DeidentificationMethod is not this campaign's medai stamp")
        items = ds.get("DeidentificationMethodCodeSequence") or []
        codes = sorted(str(item.get("CodeValue", "")) for item in items)
        if codes != self._codes:
            missing.append("DeidentificationMethodCodeSequence does not list the campaign's codes")
        for keyword in _INSTANCE_UIDS:
            uids = _values(ds.get(keyword))
            if not uids or not all(_PSEUDO_UID.fullmatch(v) for v in uids):
                missing.append(f"{keyword} is not a pseudonymized 2.25 UID")
        if missing:
            raise EdgeNotDeidentified(
                "the instance lacks medai's de-identification markers: "
                + "; ".join(missing)
                + " (an edge sends only what it de-identified itself)"
            )

    def _file_meta(self, ds: Dataset, problems: list[str]) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in meta.keys():
            if int(tag) not in _FILE_META_KEPT:
                problems.append(f"file meta {_name(int(tag))} (names the sender)")
        implementation = _values(meta.get("ImplementationClassUID"))
        if implementation and implementation != [IMPLEMENTATION_CLASS_UID]:
            problems.append("ImplementationClassUID is not medai's")

    # -- the walk -----------------------------------------------------------------------

    def _walk(self, ds: Dataset, problems: list[str], *, top: bool) -> None:
        actions = self._table.actions
        untabled = self._table.untabled
        kept_blocks: set[int] = set()
        creators: list[int] = []
        for key in list(ds._dict.keys()):
            t = int(key)
            if top and t in _STAMP:
                continue  # checked as markers
            elem = ds[key]  # decoded: the centre reads every value it screens
            vr = _vr(t, elem.VR)
            action = actions.get(t) or untabled(t, vr)
            if action == "p":
                self._private(ds, t, vr, problems, creators, kept_blocks)
                continue
            if vr == "SQ":
                self._sequence(elem.value, action, t, problems)
                continue
            values = _values(elem.value)
            if top and t in (_PATIENT_ID, _PATIENT_NAME):
                self._pseudonym(ds, t, values, problems)
            elif vr == "PN" and not all(self._pn_ok(v) for v in values):
                problems.append(f"{_name(t)} holds a person name")
            elif action == "X":
                problems.append(f"{_name(t)} (removed by de-identification)")
            elif action == "Z":
                if values:
                    problems.append(f"{_name(t)} is not empty")
            elif action == "D":
                self._dummy(t, vr, values, problems)
            elif action in ("U", "u"):
                self._uids(t, values, registered=action == "u")
            elif action == "K" and vr == "AS":
                if any(clean_age(v) != v for v in values):
                    problems.append(f"{_name(t)} holds more than an age")
            elif action == "C" and vr in _TEXT_VRS:
                self._cleaned(t, vr, values, problems)
        for creator in creators:
            if creator not in kept_blocks:
                problems.append(f"private creator {_name(creator)} with no kept element")

    def _sequence(self, value: Sequence | None, action: str, tag: int, problems: list[str]) -> None:
        items = list(value or ())
        if action == "X":
            problems.append(f"{_name(tag)} (removed by de-identification)")
        elif action == "Z" and items:
            problems.append(f"{_name(tag)} is not empty")
        elif action == "D":
            if len(items) != 1 or len(items[0]) != 0:
                problems.append(f"{_name(tag)} is not medai's dummy")
        else:
            for item in items:
                self._walk(item, problems, top=False)

    def _private(
        self,
        ds: Dataset,
        tag: int,
        vr: str,
        problems: list[str],
        creators: list[int],
        kept_blocks: set[int],
    ) -> None:
        element = tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF and self.options.safe_private_tags:
            creators.append(tag)
            return
        if element >= 0x1000 and self.options.safe_private_tags:
            creator_tag = (tag & 0xFFFF0000) | (element >> 8)
            creator = ds.get(BaseTag(creator_tag))
            names = _values(creator.value) if creator is not None else []
            name = names[0] if names else ""
            if (name, element & 0xFF) in self.options.safe_private_tags:
                kept_blocks.add(creator_tag)
                if vr == "SQ":
                    for item in ds[tag].value or ():
                        self._walk(item, problems, top=False)
                return
        problems.append(f"private element {_name(tag)} the campaign does not keep")

    def _pseudonym(self, ds: Dataset, tag: int, values: list[str], problems: list[str]) -> None:
        if len(values) != 1 or not _PSEUDONYM.fullmatch(values[0]):
            problems.append(f"{_name(tag)} is not a patient pseudonym")
        elif tag == _PATIENT_NAME and values != _values(ds.get("PatientID")):
            problems.append("PatientName is not the patient's pseudonym")

    def _pn_ok(self, value: str) -> bool:
        return value in ("", _DUMMY_TEXT) or _PSEUDONYM.fullmatch(value) is not None

    def _dummy(self, tag: int, vr: str, values: list[str], problems: list[str]) -> None:
        if vr in _TEXT_VRS and vr != "AS":
            expected = {"UR": "urn:anonymized"}.get(vr, _DUMMY_TEXT)
            if values != [expected]:
                problems.append(f"{_name(tag)} is not medai's dummy")
        elif vr in _DATE_VRS and values != [_DUMMY_DATES[vr]]:
            problems.append(f"{_name(tag)} is not medai's dummy")
        elif vr == "UI":
            self._uids(tag, values, registered=False)

    def _uids(self, tag: int, values: list[str], *, registered: bool) -> None:
        for value in values:
            if _PSEUDO_UID.fullmatch(value) or (registered and value in UID_dictionary):
                continue
            raise EdgeNotDeidentified(
                f"the instance lacks medai's de-identification markers: {_name(tag)} is not "
                "a pseudonymized 2.25 UID (an edge sends only what it de-identified itself)"
            )

    def _cleaned(self, tag: int, vr: str, values: list[str], problems: list[str]) -> None:
        if not values:
            return
        if narrative.removes(tag, vr, self._kept_narrative):
            problems.append(f"{_name(tag)} (narrative text, removed by de-identification)")
            return
        for value in values:
            if tag in self._fill and value == _DUMMY_TEXT:
                continue  # a Type 1 value cleaned to nothing gets the dummy
            if self._cleaner.clean(value) != value:
                problems.append(f"{_name(tag)} holds text the allow-list cleaner removes")
                return
