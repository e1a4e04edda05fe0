"""The "C" (clean) action on free text: keep only clinical vocabulary; shift dates.

Cleaning is an allow-list, so it cannot leak by construction: a word stays only if it is a
term of the clinical vocabulary (:mod:`medai.collection.deid.vocabulary`), a number next to
such a term or with a unit, or a short code such as "T1" or "L4"; punctuation stays only
between kept words. Every other word goes, whatever it is: a name spelled in any way, an
initial, a place, a physician named nowhere else. The identifying values found in the
dataset are matched as well (case, accent and transliteration folded, see
:mod:`medai.collection.deid.folding`): a name wins over the vocabulary (a patient named
"Chest"), and IDs win over numbers and codes. Patterns (:mod:`medai.collection.deid.scrubs`)
remove dates, e-mails, phone numbers, addresses and long numbers first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from medai.collection.deid.folding import skeleton
from medai.collection.deid.scrubs import scrub
from medai.collection.deid.vocabulary import Vocabulary

__all__ = [
    "DescriptorCleaner",
    "clean_age",
    "cleaner_for",
    "shift_date",
]

# An atom: a number (with decimals and a unit or suffix), a word, or one punctuation mark.
_ATOM = re.compile(r"\d+(?:[.,]\d+)?[^\W_]*|[^\W\d_][^\W_]*|\S")
_MEASURE = re.compile(r"(\d+)(?:[.,](\d+))?([^\W\d_]*)")
_CODE = re.compile(r"[a-z]{1,2}\d{1,3}[a-z]?")  # T1, L4, C5, B30f, Br40: no one's name
_ORDINALS = frozenset({"st", "nd", "rd", "th"})
_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}%")
_LEADING = "([{\"'"
_TRAILING = ",;:.)]}\"'"
_UTC_OFFSET = re.compile(r"[+-](?:0\d|1[0-4])[0-5]\d")  # TimezoneOffsetFromUTC: identifies no one
_VALUE_SPLIT = re.compile(r"[^\w]+")
_MAX_BARE_DIGITS = 3  # bare numbers: counts and sizes, never a year or part of an ID
_MAX_MEASURE_DIGITS = 4  # with a unit: "1500 ms"

# _NUMBER: up to three digits, kept next to a clinical word; _MEASURE_ONLY: four digits,
# kept only before a unit ("1500 ms"), never alone (a year, a PIN, the end of a phone number).
_WORD, _NUMBER, _MEASURE_ONLY, _UNIT, _PUNCT, _DROP = range(6)


@dataclass
class _Atom:
    text: str
    kind: int
    gap: bool  # whitespace before it
    keep: bool = False


_MEMO_SIZE = 256  # distinct texts remembered per cleaner


class DescriptorCleaner:
    """Keeps the clinical words of free text and nothing else, deterministically.

    Parameters
    ----------
    vocabulary
        The clinical vocabulary (shipped terms plus the campaign's).
    names
        Skeletons (:func:`~medai.collection.deid.folding.skeleton`) of the words of person
        names found in the dataset: removed even when they are vocabulary terms.
    identifiers
        Skeletons of the words and numbers of other identifying values found in the
        dataset (IDs, institution, address): removed where they would stay as a number
        or a code.
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        names: Iterable[str] = (),
        identifiers: Iterable[str] = (),
    ) -> None:
        self._vocabulary = vocabulary
        self._names = frozenset(names)
        self._identifiers = frozenset(identifiers)
        # The instances of a series repeat their descriptions, and one cleaner serves a
        # series (see cleaner_for): each distinct text is cleaned once. Bounded.
        self._cleaned: dict[str, str] = {}

    def clean(self, text: str) -> str:
        """``text`` reduced to its clinical words, single spaces between them.

        Parameters
        ----------
        text
            One value of a cleaned text attribute.

        Returns
        -------
        str
            Possibly empty.
        """
        cleaned = self._cleaned.get(text)
        if cleaned is None:
            cleaned = self._clean(text)
            if len(self._cleaned) < _MEMO_SIZE:
                self._cleaned[text] = cleaned
        return cleaned

    def _clean(self, text: str) -> str:
        if _UTC_OFFSET.fullmatch(text.strip()):
            return text.strip()
        text = scrub(unicodedata.normalize("NFC", text))
        atoms = self._atoms(text)
        _keep_numbers(atoms)
        _keep_punctuation(atoms)
        return _joined(atoms)

    def _atoms(self, text: str) -> list[_Atom]:
        atoms: list[_Atom] = []
        vocabulary = self._vocabulary
        for chunk in text.split():
            bare = chunk.lstrip(_LEADING).rstrip(_TRAILING)
            if bare and vocabulary.allows_compound(bare):
                start = chunk.index(bare)
                atoms.extend(_Atom(c, _PUNCT, i == 0) for i, c in enumerate(chunk[:start]))
                atoms.append(_Atom(bare, _WORD, start == 0, True))
                atoms.extend(_Atom(c, _PUNCT, False) for c in chunk[start + len(bare) :])
                continue
            gap = True
            for piece in _ATOM.findall(chunk):
                atoms.append(self._classify(piece, gap))
                gap = False
        self._keep_phrase_ends(atoms)
        return atoms

    def _keep_phrase_ends(self, atoms: list[_Atom]) -> None:
        """An ambiguous word ("QUANG", also a name) stays where it ends a listed phrase
        after a kept word ("CAN QUANG"); a name found in the dataset still goes."""
        words = [a for a in atoms if a.kind != _PUNCT]
        for previous, atom in zip(words, words[1:], strict=False):
            if (
                atom.kind == _DROP
                and previous.keep
                and previous.kind == _WORD
                and skeleton(atom.text) not in self._names
                and self._vocabulary.continues(previous.text, atom.text)
            ):
                atom.kind, atom.keep = _WORD, True

    def _classify(self, piece: str, gap: bool) -> _Atom:
        first = piece[0]
        if not first.isalnum():
            return _Atom(piece, _PUNCT, gap)
        key = skeleton(piece)
        vocabulary = self._vocabulary
        if first.isdigit():
            if key in self._identifiers:
                return _Atom(piece, _DROP, gap)  # a number from an ID, an address...
            kind = _measure(piece, vocabulary)
            return _Atom(piece, kind, gap, kind == _WORD)
        if len(key) >= 2 and key in self._names:
            return _Atom(piece, _DROP, gap)  # a name wins over the vocabulary
        if vocabulary.allows(piece):
            return _Atom(piece, _WORD, gap, True)
        if vocabulary.is_unit(piece):
            return _Atom(piece, _UNIT, gap)
        if piece.isascii() and _CODE.fullmatch(piece.lower()) and key not in self._identifiers:
            return _Atom(piece, _WORD, gap, True)
        return _Atom(piece, _DROP, gap)


def _measure(piece: str, vocabulary: Vocabulary) -> int:
    """The kind of an atom starting with a digit: a measure (a word), a bare number, or
    something to drop (a year, part of an ID, digits mixed with letters)."""
    match = _MEASURE.fullmatch(piece)
    if match is None:
        return _DROP
    whole, fraction, suffix = match.group(1), match.group(2) or "", match.group(3)
    if len(fraction) > 3:
        return _DROP
    if not suffix:
        if len(whole) <= _MAX_BARE_DIGITS:
            return _NUMBER
        return _MEASURE_ONLY if len(whole) <= _MAX_MEASURE_DIGITS else _DROP
    if len(whole) <= _MAX_MEASURE_DIGITS and (
        vocabulary.is_unit(suffix) or suffix.lower() in _ORDINALS or vocabulary.allows(piece)
    ):
        return _WORD
    return _DROP


def _neighbours(atoms: list[_Atom], index: int) -> tuple[_Atom | None, _Atom | None]:
    """The nearest atoms before and after ``index`` that are not punctuation."""
    before = next((a for a in reversed(atoms[:index]) if a.kind != _PUNCT), None)
    after = next((a for a in atoms[index + 1 :] if a.kind != _PUNCT), None)
    return before, after


def _keep_numbers(atoms: list[_Atom]) -> None:
    """Numbers stay with a unit after them ("120 kV") or next to a kept word ("2 VIEWS");
    a number beside removed words only (a house number, a day) goes with them."""
    words = [a for a in atoms if a.kind != _PUNCT]
    for previous, atom in zip(words, words[1:], strict=False):
        if atom.kind == _UNIT and previous.kind in (_NUMBER, _MEASURE_ONLY):
            previous.keep = atom.keep = True
    for index, atom in enumerate(words):
        if atom.kind != _NUMBER or atom.keep:
            continue
        before = words[index - 1] if index else None
        after = words[index + 1] if index + 1 < len(words) else None
        atom.keep = any(n is not None and n.kind == _WORD and n.keep for n in (before, after))


def _keep_punctuation(atoms: list[_Atom]) -> None:
    """Punctuation stays between kept atoms (an opening bracket before one, a closing one
    after one), never next to something removed."""
    for index, atom in enumerate(atoms):
        if atom.kind != _PUNCT:
            continue
        before, after = _neighbours(atoms, index)
        kept_before = before is not None and before.keep
        kept_after = after is not None and after.keep
        if atom.text in _OPENING:
            atom.keep = kept_after
        elif atom.text in _CLOSING:
            atom.keep = kept_before
        else:
            atom.keep = kept_before and kept_after


def _joined(atoms: list[_Atom]) -> str:
    """The kept atoms, as written, with one space where text was between them."""
    out: list[str] = []
    apart = False
    for atom in atoms:
        if not atom.keep:
            apart = True
            continue
        if out and (apart or atom.gap):
            out.append(" ")
        out.append(atom.text)
        apart = False
    return "".join(out)


@lru_cache(maxsize=256)
def cleaner_for(found: frozenset[tuple[str, str]], vocabulary: Vocabulary) -> DescriptorCleaner:
    """The cleaner for values found in a dataset, as (VR, value) pairs.

    Cached: the instances of one series share their identifying values, so their words
    are folded once per series.

    Parameters
    ----------
    found
        Identifying values gathered before de-identification changed them; person names
        (PN) give name words, other values identifiers; dates (DA, DT) are left to the
        patterns, which remove every date.
    vocabulary
        The campaign's vocabulary.
    """
    names: set[str] = set()
    identifiers: set[str] = set()
    for vr, value in found:
        if vr in ("DA", "DT"):
            continue
        words = {skeleton(w) for w in _VALUE_SPLIT.split(value.replace("^", " ")) if w}
        if vr == "PN":
            names.update(w for w in words if len(w) >= 2 and not w.isdigit())
            identifiers.update(w for w in words if w.isdigit())
        else:
            identifiers.update(words)
    return DescriptorCleaner(vocabulary, names, identifiers)


_AGE = re.compile(r"(?<![0-9A-Za-z])\d{3}[DWMY](?![0-9A-Za-z])")
_AGE_WORDS = re.compile(
    r"(?<!\d)(\d{1,3})\s*(d|days?|ngày|w|wks?|weeks?|tuần|m|mos?|months?|tháng|y|yrs?|years?"
    r"|tuổi|năm|j|jahre?)?(?!\w)",
    re.IGNORECASE,
)
_AGE_UNITS = {"d": "D", "n": "D", "w": "W", "t": "W", "m": "M", "y": "Y", "j": "Y"}


def clean_age(value: str) -> str | None:
    """A Patient's Age (AS) in its standard form ``nnnD|W|M|Y``, and nothing else.

    The "K" of Retain Patient Characteristics keeps the age, not whatever text a site typed
    into the field: "69 years Ferreira" becomes "069Y", a value with no age becomes None.

    Parameters
    ----------
    value
        One AS value as received.

    Returns
    -------
    str or None
        None when no age can be read from it (the element is then emptied).
    """
    text = value.strip(" \x00")
    if len(text) == 4 and _AGE.fullmatch(text):
        return text
    standard = _AGE.search(text)
    if standard is not None:
        return standard.group(0)
    match = _AGE_WORDS.search(text)
    if match is None:
        return None
    unit = (match.group(2) or "y").lower()
    if unit.startswith("th"):  # tháng (month) before "t" of tuần (week)
        letter = "M"
    elif unit in ("năm", "tuổi"):
        letter = "Y"
    else:
        letter = _AGE_UNITS[unit[0]]
    return f"{int(match.group(1)):03d}{letter}"


def shift_date(value: str, days: int, vr: str) -> str | None:
    """A DA value, or the date part of a DT value, moved by ``days`` (the "C" action on dates
    under Retain Longitudinal Temporal Information with Modified Dates).

    Parameters
    ----------
    value
        ``YYYYMMDD`` (also ACR-NEMA ``YYYY.MM.DD``), or a DT starting with one; a DT keeps
        its time and UTC offset unchanged.
    days
        The patient's offset (negative).
    vr
        "DA" or "DT".

    Returns
    -------
    str or None
        None when the value holds no full date (it cannot be shifted, so it must go).
    """
    text = value.strip(" \x00")
    if vr == "DA" and len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")  # ACR-NEMA style YYYY.MM.DD
    head, tail = text[:8], text[8:]
    if len(head) != 8 or not head.isdigit() or (vr == "DA" and tail):
        return None
    try:
        moved = date(int(head[:4]), int(head[4:6]), int(head[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}{tail}"
