"""The "C" (clean) action: scrub identifying values and patterns from free text; shift dates."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta
from functools import lru_cache

__all__ = [
    "DescriptorCleaner",
    "cleaner_for",
    "date_terms",
    "identifier_terms",
    "shift_date",
]

_MONTHS_EN = (
    "January February March April May June July August September October November December"
).split()
_MONTHS_DE = (
    "Januar Februar März April Mai Juni Juli August September Oktober November Dezember"
).split()

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NUMERIC_DATE = re.compile(
    r"(?<![\w.])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?![\w])"
)
# Digits with phone-like separators; the count of digits (>= 7) is checked on each match,
# and dots are left out so that decimal numbers ("0.625 1.25") never read as a phone number.
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d ()/-]{5,}\d(?![\w.])")
_LONG_NUMBER = re.compile(r"\d{5,}")
_SPACES = re.compile(r"\s+")
_PN_SPLIT = re.compile(r"[\^=]")
_PART_SPLIT = re.compile(r"[,;\r\n\\]")


def identifier_terms(value: str, vr: str) -> list[str]:
    """The strings to scrub from free text because ``value`` was found in the dataset.

    Parameters
    ----------
    value
        One value of an identifying attribute (a name, an ID, an institution, an address).
    vr
        Its VR; person names (PN) also contribute each name component.

    Returns
    -------
    list of str
        The whole value and its parts; parts too short to be identifying are left out.
    """
    value = value.strip(" \x00")
    terms: list[str] = []
    if vr == "PN":
        parts = [p.strip() for p in _PN_SPLIT.split(value)]
        terms.extend(p for p in parts if len(p) >= 3 or (len(p) == 2 and p.isalpha()))
        value = " ".join(p for p in parts if p)
    else:
        terms.extend(p.strip() for p in _PART_SPLIT.split(value) if len(p.strip()) >= 3)
    if len(value) >= 3:
        terms.append(value)
    return terms


def date_terms(value: str) -> list[str]:
    """Spellings of a DA (or the date part of a DT) value that free text might use.

    Numeric spellings (2024-03-01, 01.03.2024, 20240301) are also caught by the generic
    patterns; the month-name spellings ("1 March 2024", "1. März 2024") only by these.

    Parameters
    ----------
    value
        A DA value ``YYYYMMDD`` or a DT value starting with one.

    Returns
    -------
    list of str
        Empty when the value is not a valid date.
    """
    text = value.strip(" \x00")[:8]
    if len(text) != 8 or not text.isdigit():
        return []
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return []
    y, m, d = day.year, day.month, day.day
    terms = [
        text,
        f"{y}-{m:02d}-{d:02d}",
        f"{y}/{m:02d}/{d:02d}",
        f"{d:02d}.{m:02d}.{y}",
        f"{d}.{m}.{y}",
        f"{d:02d}/{m:02d}/{y}",
        f"{m:02d}/{d:02d}/{y}",
        f"{m}/{d}/{y}",
        f"{d:02d}-{m:02d}-{y}",
    ]
    for months in (_MONTHS_EN, _MONTHS_DE):
        full = months[m - 1]
        for name in (full, full[:3]):
            terms += [
                f"{d} {name} {y}",
                f"{d:02d} {name} {y}",
                f"{d}. {name} {y}",
                f"{name} {d}, {y}",
                f"{name} {d} {y}",
                f"{d}-{name}-{y}",
                f"{d:02d}-{name}-{y}",
            ]
    return terms


class DescriptorCleaner:
    """Removes identifying values and patterns from free text, deterministically.

    Parameters
    ----------
    terms
        Values found elsewhere in the original dataset (see :func:`identifier_terms`,
        :func:`date_terms`); matched case-insensitively as whole words.
    """

    def __init__(self, terms: Iterable[str]) -> None:
        unique = sorted({t for t in terms if t}, key=lambda t: (-len(t), t))
        self._terms: re.Pattern[str] | None = None
        if unique:
            alternatives = "|".join(
                r"\s+".join(re.escape(word) for word in t.split()) for t in unique
            )
            self._terms = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def clean(self, text: str) -> str:
        """``text`` without identifying values, e-mail addresses, dates, phone numbers and
        numbers of five or more digits; whitespace collapsed."""
        text = _EMAIL.sub(" ", text)
        if self._terms is not None:
            text = self._terms.sub(" ", text)
        text = _NUMERIC_DATE.sub(" ", text)
        text = _PHONE.sub(_drop_phone, text)
        text = _LONG_NUMBER.sub(" ", text)
        return _SPACES.sub(" ", text).strip()


def _drop_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    return " " if sum(c.isdigit() for c in found) >= 7 else found


@lru_cache(maxsize=256)
def cleaner_for(found: frozenset[tuple[str, str]]) -> DescriptorCleaner:
    """The cleaner for values found in a dataset, as (VR, value) pairs.

    Cached: the instances of one series share their identifying values, so the terms are
    spelled out and compiled once per series.
    """
    terms: list[str] = []
    for vr, value in found:
        terms += date_terms(value) if vr in ("DA", "DT") else identifier_terms(value, vr)
    return DescriptorCleaner(terms)


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
