"""Case, accent and transliteration folding of words, for matching free text.

Two strengths. :func:`fold` is for the clinical vocabulary: it removes only what writing
systems treat as optional (case, diacritics, letters with an ASCII spelling), so it never
makes an unknown word look like a vocabulary term it is not. :func:`skeleton` is for the
identifying values found in a dataset: it also merges the German umlaut spellings
(ue/oe/ae), so Müller, Mueller and Muller all meet at "muller", Nguyễn and Nguyen at
"nguyen". Folding more can only remove more there, which is the safe direction.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

__all__ = ["fold", "has_marks", "lower_nfc", "skeleton"]

# Letters NFKD does not decompose into an ASCII base letter.
_LETTERS = str.maketrans(
    {
        "đ": "d",
        "ð": "d",
        "ß": "ss",
        "ø": "o",
        "æ": "ae",
        "œ": "oe",
        "ł": "l",
        "þ": "th",
        "ı": "i",
        "ħ": "h",
        "ŧ": "t",
        "ŋ": "n",
        "ſ": "s",
        "’": "'",
    }
)
_UMLAUT_SPELLINGS = (("ae", "a"), ("oe", "o"), ("ue", "u"))


@lru_cache(maxsize=8192)
def fold(word: str) -> str:
    """``word`` lower-cased, without diacritics, special letters spelled in ASCII.

    Parameters
    ----------
    word
        One word (no meaning is given to spaces).

    Returns
    -------
    str
        E.g. "Chụp" -> "chup", "Đầu" -> "dau", "Straße" -> "strasse", "Müller" -> "muller".
    """
    if word.isascii():
        return word.lower()
    decomposed = unicodedata.normalize("NFKD", word.lower().translate(_LETTERS))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_LETTERS)


@lru_cache(maxsize=8192)
def skeleton(word: str) -> str:
    """:func:`fold`, with the umlaut spellings ae/oe/ue merged into a/o/u.

    Parameters
    ----------
    word
        One word of an identifying value, or of text to compare with one.

    Returns
    -------
    str
        "MÜLLER", "Mueller" and "Muller" all give "muller"; "Jürgen" and "Juergen" "jurgen".
    """
    folded = fold(word)
    for spelling, letter in _UMLAUT_SPELLINGS:
        folded = folded.replace(spelling, letter)
    return folded


def lower_nfc(word: str) -> str:
    """``word`` lower-cased in composed form (text may arrive decomposed, as NFD)."""
    return unicodedata.normalize("NFC", word.lower())


def has_marks(word: str) -> bool:
    """Whether ``word`` carries a diacritic or a letter outside ASCII."""
    return not word.isascii() and fold(word) != lower_nfc(word)
