"""Patterns that never survive in cleaned text: e-mails, web addresses, dates, phone numbers,
street addresses and numbers of five or more digits.

The allow-list of :mod:`medai.collection.deid.descriptors` already drops every word that is
not clinical; these patterns are its second line and remove whole spans first, so that the
numbers of a date or an address never stay behind next to a clinical word.
"""

from __future__ import annotations

import re

__all__ = ["scrub"]

_MONTHS = (
    # English and German names and their usual abbreviations
    "january|february|march|april|may|june|july|august|september|october|november|december"
    "|januar|februar|märz|maerz|juni|juli|oktober|dezember"
    "|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|okt|nov|dec|dez"
)
_ORDINAL = r"\d{1,2}(?:st|nd|rd|th|\.)?"
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_NUMERIC_DATE = re.compile(
    r"(?<![\w.])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
    r"|\d{1,2}[-/.]\d{4})(?![\w])"
)
_NAMED_DATE = re.compile(
    rf"(?<!\w)(?:{_ORDINAL}\s*(?:of\s+)?)?(?:{_MONTHS})\.?(?!\w)"
    rf"(?:\s*{_ORDINAL}(?!\w),?)?(?:\s*\d{{2,4}}(?!\w))?",
    re.IGNORECASE,
)
# "ngày 3 tháng 3 năm 2024", "tháng 3/2024", "năm 2024", with or without diacritics.
_VIETNAMESE_DATE = re.compile(
    r"(?<!\w)(?:(?:ngày|ngay)\s*\d{1,2}\s*)?(?:(?:tháng|thang)\s*\d{1,2}\s*(?:[/-]\s*\d{2,4})?)?"
    r"(?:(?:năm|nam)\s*\d{2,4})?(?!\w)",
    re.IGNORECASE,
)
# Digits with phone-like separators; the count of digits (>= 7) is checked on each match,
# and dots are left out so that decimal numbers ("0.625 1.25") never read as a phone number.
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d ()/-]{5,}\d(?![\w.])")
_STREET = re.compile(
    r"(?<!\w)\d{1,5}[a-z]?\s+(?:[^\W\d_][\w'.-]*\s+){0,3}"
    r"(?:street|st|road|rd|avenue|ave|lane|ln|boulevard|blvd|strasse|straße|str|weg|gasse"
    r"|platz|allee)(?!\w)\.?",
    re.IGNORECASE,
)
# Vietnamese addresses: a house number before a street word, or an administrative unit.
_VIETNAMESE_ADDRESS = re.compile(
    r"(?<!\w)(?:(?:số|so)\s*)?\d{1,5}[a-z]?(?:/\d{1,5})*\s+(?:đường|duong|phố|pho|ngõ|ngo"
    r"|hẻm|hem|ngách|ngach)(?!\w)"
    r"|(?<!\w)(?:quận|quan|phường|phuong|huyện|huyen|xã|tỉnh|tinh|tp|q|p)\.?\s*\d{1,3}(?!\w)",
    re.IGNORECASE,
)
_LONG_NUMBER = re.compile(r"\d{5,}")


def scrub(text: str) -> str:
    """``text`` with every span matching one of the patterns replaced by a space.

    Parameters
    ----------
    text
        Free text, composed (NFC).

    Returns
    -------
    str
        The text; its length may change, its other characters do not.
    """
    text = _EMAIL.sub(" ", text)
    text = _URL.sub(" ", text)
    text = _NUMERIC_DATE.sub(" ", text)
    text = _NAMED_DATE.sub(_named_date, text)
    if any(c in text for c in "nNtT"):  # ngày / tháng / năm: skip the pattern when absent
        text = _VIETNAMESE_DATE.sub(_nonempty, text)
    text = _PHONE.sub(_drop_phone, text)
    text = _STREET.sub(" ", text)
    text = _VIETNAMESE_ADDRESS.sub(" ", text)
    return _LONG_NUMBER.sub(" ", text)


def _named_date(match: re.Match[str]) -> str:
    # "Mar" or "May" alone are words too; the allow-list drops them anyway, so a match is
    # only worth removing when numbers come with it.
    found = match.group(0)
    return " " if any(c.isdigit() for c in found) else found


def _nonempty(match: re.Match[str]) -> str:
    found = match.group(0)
    return " " if any(c.isdigit() for c in found) else found


def _drop_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    return " " if sum(c.isdigit() for c in found) >= 7 else found
