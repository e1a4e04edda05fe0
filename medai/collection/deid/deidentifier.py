"""The Deidentifier: the PS3.15 Basic Profile and campaign options, applied recursively.

One module of about 420 lines on purpose: the recursive walk and the per-action handlers share
one dataset's state (its pseudonymizer, the values collected for cleaning free text). What can
stand alone already does: the action table is data (``table.py``), free-text cleaning is
``descriptors.py``, pixel rules are ``pixels.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom import Dataset
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from medai.collection.deid import narrative
from medai.collection.deid.descriptors import clean_age, cleaner_for, shift_date
from medai.collection.deid.iod_requirements import (
    item_content,
    kept_when_emptied,
    type1_text_to_fill,
)
from medai.collection.deid.pixels import clear_overlay_bits, screen_object
from medai.collection.deid.table import (
    DeidOptions,
    action_table,
    identifying_tags,
    identity_elements,
)
from medai.collection.deid.vocabulary import load_vocabulary
from medai.collection.pseudonymize import Pseudonymizer
from medai.errors import CannotDeidentify

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "Deidentifier"]

logger = logging.getLogger(__name__)

IMPLEMENTATION_CLASS_UID = "2.25.315151649078819242360255584479015205456"
"""medai's fixed Implementation Class UID (a UUID-derived 2.25 UID), written to file meta."""
IMPLEMENTATION_VERSION_NAME = "MEDAI_DEID_1"

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_CHARSET = 0x00080005
_TEXT_VRS = frozenset({"AE", "AS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_DATE_VRS = frozenset({"DA", "DT"})
_DROPS_CONTENT = frozenset({"X", "Z", "D"})

# D: a non-zero-length value valid for the VR that says nothing about anyone.
_TEXT_DUMMY = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {
    "AE": _TEXT_DUMMY, "CS": _TEXT_DUMMY, "LO": _TEXT_DUMMY, "LT": _TEXT_DUMMY,
    "PN": _TEXT_DUMMY, "SH": _TEXT_DUMMY, "ST": _TEXT_DUMMY, "UC": _TEXT_DUMMY,
    "UT": _TEXT_DUMMY, "UR": "urn:anonymized", "AS": "000Y", "DA": "19000101",
    "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "US": 0, "SS": 0,
    "UL": 0, "SL": 0, "SV": 0, "UV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
    "OB": b"\x00\x00", "OW": b"\x00\x00", "UN": b"\x00\x00",
}  # fmt: skip


@dataclass
class _Context:
    """State of one deidentify() call."""

    offset_days: int
    codec: str | None  # fast decoding of raw text, or None: let pydicom decode
    found: set[tuple[str, str]] = field(default_factory=set)  # (VR, value) to scrub
    to_clean: list[DataElement] = field(default_factory=list)
    to_fill: list[DataElement] = field(default_factory=list)  # Type 1: never left empty


class Deidentifier:
    """Applies PS3.15 Table E.1-1, the campaign options and the keep-list to datasets.

    Elements are changed where they lie: a value still in its raw (undecoded) form is
    rewritten as raw bytes, so most elements are never decoded by pydicom at all.

    Parameters
    ----------
    options
        The campaign's de-identification options.
    pseudonymizer
        Supplies the patient pseudonym, the UID replacements and the date offset.
    """

    def __init__(self, options: DeidOptions, pseudonymizer: Pseudonymizer) -> None:
        self.options = options
        self._pseudo = pseudonymizer
        self._table = action_table(options)
        self._identifying = identifying_tags()
        # Values are only gathered for cleaning when some option cleans text at all.
        self._collect = options.clean_descriptors or options.retain_patient_characteristics
        self._stamps: dict[tuple[bool, bool], list[RawDataElement]] = {}
        self._item_content = item_content()
        self._kept_when_emptied = kept_when_emptied()
        self._fill = type1_text_to_fill()
        self._vocabulary = load_vocabulary(options.extra_vocabulary)
        self._kept_narrative = narrative.kept_narrative_tags(options.keep_narrative)

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        """The keyed pseudonymizer (receivers use it to find what they already hold)."""
        return self._pseudo

    def deidentify(self, ds: Dataset, *, issuer: str | None = "") -> Dataset:
        """De-identify ``ds`` in place (file meta included) and return it.

        Parameters
        ----------
        ds
            A fully read dataset (e.g. from ``medai.dicom.read.parse_instance``).
        issuer
            Who assigned the PatientID, which the pseudonym and date offset key on with
            it: the ingest passes :func:`medai.collection.identity.PatientIdentities.issuer`
            (IssuerOfPatientID, else the site's issuer; None for a patient catalogued
            before migration 0006). ``""`` when unknown.

        Returns
        -------
        Dataset
            The same object. The same input bytes always give byte-identical output.

        Raises
        ------
        BurnedInAnnotation
            The pixels may show identifying text (see :func:`screen_object`).
        UnsupportedObject
            Objects that may hold free text with no rule (SR, PDF, RT, no pixel data...).
        CannotDeidentify
            No PatientID (so no consistent pseudonym), or overlay bits in compressed pixels.
        """
        screen_object(ds)
        patient_id = _text(ds, _PATIENT_ID)
        if not patient_id:
            raise CannotDeidentify(
                "PatientID is empty or missing: no consistent patient pseudonym is possible"
            )
        clear_overlay_bits(ds)
        ctx = _Context(
            offset_days=self._pseudo.date_offset_days(issuer, patient_id),
            codec=_codec_for(_text(ds, _CHARSET, multi=True)),
        )
        pseudonym = self._pseudo.patient_pseudonym(issuer, patient_id)
        self._walk(ds, ctx, top=True, pseudonym=pseudonym)
        if ctx.to_clean:
            cleaner = cleaner_for(frozenset(ctx.found), self._vocabulary)
            for elem in ctx.to_clean:
                elem.value = _join([cleaner.clean(v) for v in _values(elem.value)])
        for elem in ctx.to_fill:
            if not elem.value:  # a Type 1 value cleaned to nothing (see iod_requirements)
                elem.value = _TEXT_DUMMY
        self._apply_stamp(ds)
        self._update_file_meta(ds)
        return ds

    def _walk(self, ds: Dataset, ctx: _Context, *, top: bool, pseudonym: str = "") -> None:
        store = ds._dict
        actions = self._table.actions
        untabled = self._table.untabled
        creators: list[BaseTag] = []
        kept_blocks: set[int] = set()
        if not top and _CHARSET in store and ctx.codec is not None:
            # An item with its own character set: let pydicom decode its text.
            ctx = _Context(ctx.offset_days, None, ctx.found, ctx.to_clean, ctx.to_fill)
        for key, elem in list(store.items()):
            t = int(key)  # a plain int: lookups and comparisons below stay in C
            vr = _vr_of(t, elem)
            action = actions.get(t)
            if action is None:
                action = untabled(t, vr)
                if action == "K" and vr != "SQ":
                    continue  # the common case: numbers and codes outside the table
                if action == "p":
                    self._private(ds, key, vr, ctx, creators, kept_blocks)
                    continue
            raw = _is_raw(elem)
            if self._collect and (
                vr == "PN"
                or vr in _DATE_VRS
                or t in self._identifying
                or (vr == "SQ" and action in _DROPS_CONTENT)
            ):
                # Sequences that are walked contribute their values on the way down.
                self._gather(ds, key, vr, elem, ctx, raw)
            if top and (t == _PATIENT_ID or t == _PATIENT_NAME):
                store[key] = (
                    _replaced(elem, [pseudonym], vr) if raw else (DataElement(key, vr, pseudonym))
                )
            elif action == "X":
                del store[key]
            elif action == "K":
                if vr == "SQ":
                    self._walk_items(ds, key, ctx)
                elif vr == "AS":
                    self._age(ds, key, elem, raw)
            elif action == "Z":
                store[key] = (
                    _emptied(elem) if raw else (DataElement(key, vr, empty_value_for_VR(vr)))
                )
            elif action == "D":
                self._dummy(ds, key, vr)
            elif action == "U" and vr == "SQ":
                self._walk_items(ds, key, ctx)
            elif action == "U" or action == "u":
                self._uids(ds, key, elem, raw, keep_registered=action == "u")
            elif vr == "SQ":  # "C" on a sequence: walk it
                self._walk_items(ds, key, ctx)
            elif vr in _DATE_VRS:
                self._shift(ds, key, vr, elem, ctx, raw)
            elif vr in _TEXT_VRS and narrative.removes(t, vr, self._kept_narrative):
                del store[key]  # narrative: what the allow-list leaves of it is no description
            elif vr in _TEXT_VRS:
                ctx.to_clean.append(ds[key])  # cleaned once every identifying value is known
                if t in self._fill:
                    ctx.to_fill.append(ds[key])
            # "C" on TM and non-text VRs: a time of day or a number identifies no one: kept.
        for creator in creators:
            if int(creator) not in kept_blocks:
                del store[creator]

    def _walk_items(self, ds: Dataset, key: BaseTag, ctx: _Context) -> None:
        """Walk the items of sequence ``key``, then drop those de-identification hollowed.

        An item that had elements and has none left, or that lost the content its macro
        requires (see ``iod_requirements.item_content``), is removed whole; a sequence left
        with no item is removed too unless it is Type 1 or 2 (then present and empty).
        """
        items = ds[key].value
        if not items:
            return
        needs = self._item_content.get(int(key))
        hollowed = []
        for index, item in enumerate(items):
            had_content = len(item._dict) > 0
            self._walk(item, ctx, top=False)
            if had_content and (
                not item._dict or (needs is not None and needs.isdisjoint(item._dict))
            ):
                hollowed.append(index)
        if not hollowed:
            return
        for index in reversed(hollowed):
            del items[index]
        if not items and int(key) not in self._kept_when_emptied:
            del ds._dict[key]  # Type 3: absent rather than empty

    def _private(
        self,
        ds: Dataset,
        key: BaseTag,
        vr: str,
        ctx: _Context,
        creators: list[BaseTag],
        kept_blocks: set[int],
    ) -> None:
        element = key & 0xFFFF
        safe = self.options.safe_private_tags
        if safe and 0x0010 <= element <= 0x00FF:
            creators.append(key)  # removed after the walk unless one of its elements stays
            return
        if safe and element >= 0x1000:
            creator_tag = (key & 0xFFFF0000) | (element >> 8)
            if (_text(ds, creator_tag), element & 0xFF) in safe:
                kept_blocks.add(creator_tag)
                if vr == "SQ":
                    self._walk_items(ds, key, ctx)
                return
        del ds._dict[key]

    def _gather(
        self, ds: Dataset, key: BaseTag, vr: str, elem: Any, ctx: _Context, raw: bool
    ) -> None:
        """Record identifying values (before they change) for cleaning free text later."""
        if vr == "SQ":
            # A sequence about to go: its names, IDs and dates may recur in free text.
            for item in ds[key].value or ():
                for sub in item:
                    sub_vr = sub.VR
                    if (
                        sub_vr in ("SQ", "PN")
                        or sub_vr in _DATE_VRS
                        or sub.tag in self._identifying
                    ):
                        self._gather(item, sub.tag, sub_vr, sub, ctx, False)
            return
        if raw and ctx.codec is not None:
            values = _decode(elem.value, ctx.codec, split=vr not in _UNSPLIT_VRS)
        else:
            values = _values(ds[key].value)
        ctx.found.update((vr, v) for v in values if v)

    def _dummy(self, ds: Dataset, key: BaseTag, vr: str) -> None:
        if vr == "SQ":
            # One empty item: present and non-empty, yet carrying nothing of the original.
            ds._dict[key] = DataElement(key, "SQ", Sequence([Dataset()]))
        elif vr == "UI":
            self._uids(ds, key, ds._dict[key], False, keep_registered=False)
        else:
            value = _DUMMIES.get(vr)
            ds._dict[key] = DataElement(key, vr, value if value is not None else b"\x00\x00")

    def _uids(self, ds: Dataset, key: BaseTag, elem: Any, raw: bool, keep_registered: bool) -> None:
        values = _decode(elem.value, "ascii") if raw else _values(ds[key].value)
        uid = self._pseudo.uid
        if keep_registered:
            mapped = [uid(v) if v and v not in UID_dictionary else v for v in values]
            if mapped == values:
                return
        else:
            mapped = [uid(v) for v in values if v]
        if raw:
            ds._dict[key] = _replaced(elem, mapped, "UI")
        else:
            ds[key].value = _join(mapped)

    def _age(self, ds: Dataset, key: BaseTag, elem: Any, raw: bool) -> None:
        """A kept age (AS) keeps the age only, never other text typed into it."""
        values = _decode(elem.value, "latin-1") if raw else _values(ds[key].value)
        ages = [clean_age(v) for v in values if v]
        kept = [a for a in ages if a is not None]
        if kept == values:
            return
        if raw:
            ds._dict[key] = _replaced(elem, kept, vr="AS")
        else:
            ds[key].value = _join(kept)

    def _shift(
        self, ds: Dataset, key: BaseTag, vr: str, elem: Any, ctx: _Context, raw: bool
    ) -> None:
        values = _decode(elem.value, "ascii") if raw else _values(ds[key].value)
        shifted = [shift_date(v, ctx.offset_days, vr) for v in values if v]
        kept = [] if None in shifted else [s for s in shifted if s is not None]
        if raw:
            ds._dict[key] = _replaced(elem, kept, vr)
        else:
            ds[key].value = _join(kept)

    def _apply_stamp(self, ds: Dataset) -> None:
        """PatientIdentityRemoved, DeidentificationMethod (+ code sequence), temporal flag."""
        encoding = ds.original_encoding
        if None in encoding:  # built in memory: no raw form to match
            for elem in identity_elements(self.options):
                ds[elem.tag] = elem
            return
        key = (bool(encoding[0]), bool(encoding[1]))
        if key not in self._stamps:
            # Encoded once per transfer syntax; each dataset gets its own immutable copy.
            self._stamps[key] = [_to_raw(elem, *key) for elem in identity_elements(self.options)]
        for raw in self._stamps[key]:
            ds._dict[raw.tag] = raw

    def _update_file_meta(self, ds: Dataset) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            meta = ds.file_meta = FileMetaDataset()
        for tag in list(meta.keys()):
            if int(tag) not in _FILE_META_KEPT:
                del meta[tag]  # source/sending AE titles and private meta name the sender
        # File meta is always explicit VR little endian, so raw values fit every file.
        if BaseTag(0x00020001) not in meta:
            meta._dict[BaseTag(0x00020001)] = _raw(0x00020001, "OB", b"\x00\x01", False, True)
        for tag, vr, value in (
            (0x00020002, "UI", _text(ds, 0x00080016)),
            (0x00020003, "UI", _text(ds, 0x00080018)),
            (0x00020012, "UI", IMPLEMENTATION_CLASS_UID),
            (0x00020013, "SH", IMPLEMENTATION_VERSION_NAME),
        ):
            if value:
                meta._dict[BaseTag(tag)] = _raw(tag, vr, _encode([value], vr), False, True)


def _values(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]  # str, UID, PersonName (iterable, but one value)


def _join(values: list[str]) -> str | list[str]:
    if not values:
        return ""
    return values[0] if len(values) == 1 else values


# --- identity attributes --------------------------------------------------------------

_FILE_META_KEPT = frozenset(
    {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
)


def _to_raw(elem: DataElement, implicit: bool, little: bool) -> RawDataElement:
    """``elem`` encoded in one transfer syntax (ASCII values only)."""
    if elem.VR == "SQ":
        out = DicomBytesIO()
        out.is_implicit_VR, out.is_little_endian = implicit, little
        for item in elem.value:
            body = DicomBytesIO()
            body.is_implicit_VR, body.is_little_endian = implicit, little
            write_dataset(body, item)
            data = body.getvalue()
            out.write_tag(0xFFFEE000)
            out.write_UL(len(data))
            out.write(data)
        payload = out.getvalue()
    else:
        payload = _encode(_values(elem.value), elem.VR)
    return _raw(int(elem.tag), elem.VR, payload, implicit, little)


# --- raw element values ---------------------------------------------------------------

_UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # one value; a backslash is text there
_SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                    "ISO_IR 192": "utf-8"}  # fmt: skip


def _raw(tag: int, vr: str | None, payload: bytes, implicit: bool, little: bool) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(payload), payload, 0, implicit, little, True, False)


def _is_raw(elem: Any) -> bool:
    return bool(elem.is_raw) and isinstance(elem.value, bytes)


def _vr_of(tag: int, elem: Any) -> str:
    """The element's VR; the dictionary's when the file gave none (implicit VR) or UN."""
    vr: str | None = elem.VR
    if vr is None or vr == "UN":
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return vr or "UN"
    return vr


def _codec_for(charset: str) -> str | None:
    """A Python codec that decodes raw text exactly as pydicom would, or None if unsure."""
    return _SIMPLE_CHARSETS.get(charset.strip())


def _decode(data: bytes | None, codec: str, split: bool = True) -> list[str]:
    if not data:
        return []
    text = data.decode(codec, "replace")
    parts = text.split("\\") if split else [text]
    return [p.strip(" \x00") for p in parts]


def _encode(values: list[str], vr: str) -> bytes:
    data = "\\".join(values).encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _replaced(elem: Any, values: list[str], vr: str) -> RawDataElement:
    """A raw element like ``elem`` (same tag, VR and encoding) holding ``values``."""
    payload = _encode([v for v in values if v], vr)
    return cast(RawDataElement, elem._replace(value=payload, length=len(payload)))


def _emptied(elem: Any) -> RawDataElement:
    return cast(RawDataElement, elem._replace(value=b"", length=0))


def _text(ds: Dataset, tag: int, multi: bool = False) -> str:
    """An element's value as stripped text ("" if absent), without decoding the dataset."""
    elem = ds._dict.get(BaseTag(tag))
    if elem is None:
        return ""
    if _is_raw(elem):
        values = _decode(elem.value, "latin-1")
    else:
        values = _values(elem.value)
    return "\\".join(values) if multi else (values[0].strip() if values else "")
