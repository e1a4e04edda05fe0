"""The clinical vocabulary a cleaned descriptor may keep: versioned data files, compiled once.

Each language is a text file beside this module (``en.txt``, ``vi.txt``) whose first line
is ``# version: <name>``; a campaign may add terms of its own (``extra_vocabulary`` in its
``[deidentification]`` table). :func:`load_vocabulary` compiles the files and the extra
terms once per distinct set of extra terms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from medai.collection.deid.folding import fold, has_marks, lower_nfc

__all__ = ["LANGUAGES", "Vocabulary", "load_vocabulary", "parse_vocabulary"]

LANGUAGES = ("en", "vi")
"""The vocabulary files shipped with medai, in the order they are stamped."""

_SECTIONS = frozenset({"terms", "units", "ambiguous", "phrases"})
_VERSION_PREFIX = "# version:"


@dataclass(frozen=True)
class Vocabulary:
    """Terms, units and ambiguous syllables, folded for matching.

    Attributes
    ----------
    version
        What to record with the de-identification method, e.g. ``"en-1 vi-1"``, with
        ``"+campaign:<hash>"`` when the campaign added terms.
    compounds
        Folded terms holding a slash, hyphen, asterisk or other joining mark ("w/o").
    terms
        Folded terms: a word written without diacritics matches one of these.
    marked
        Lower-cased terms as written with their diacritics: a word written with
        diacritics must be one of these.
    units
        Folded units: kept after a number ("5mm", "120 kV").
    ambiguous
        Folded syllables that are also common name syllables when written without
        diacritics: only their diacritic form (in ``marked``) is kept, or the word when
        it ends a phrase.
    phrases
        Folded pairs of consecutive words (the last two of each listed phrase): the
        second is kept after the first even when it is ambiguous ("can quang").
    """

    version: str
    compounds: frozenset[str]
    terms: frozenset[str]
    marked: frozenset[str]
    units: frozenset[str]
    ambiguous: frozenset[str]
    phrases: frozenset[tuple[str, str]]

    def allows(self, word: str) -> bool:
        """Whether ``word`` (one word, no joining marks) is a clinical term."""
        key = fold(word)
        if key not in self.terms:
            return False
        if has_marks(word):
            return lower_nfc(word) in self.marked
        return key not in self.ambiguous

    def allows_compound(self, chunk: str) -> bool:
        """Whether ``chunk`` (text between spaces, e.g. "W/O") is a compound term."""
        return fold(chunk) in self.compounds

    def continues(self, previous: str, word: str) -> bool:
        """Whether ``word`` after ``previous`` ends a listed phrase ("cản" + "quang")."""
        return (fold(previous), fold(word)) in self.phrases

    def is_unit(self, word: str) -> bool:
        """Whether ``word`` is a unit that may follow a number."""
        return fold(word) in self.units


def parse_vocabulary(text: str) -> tuple[str, dict[str, list[str]]]:
    """The version and the words of each section of one vocabulary file.

    Parameters
    ----------
    text
        The file's text: a ``# version: NAME`` first line, ``#`` comment lines, words
        separated by whitespace, optional ``[units]``, ``[phrases]`` (one phrase a line)
        and ``[ambiguous]`` section lines.

    Returns
    -------
    tuple
        The version name and the entries of each section (``terms``, ``units``,
        ``ambiguous``: words; ``phrases``: lines).

    Raises
    ------
    ValueError
        If the first line is not a version line or a section is unknown.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith(_VERSION_PREFIX):
        raise ValueError("a vocabulary file must start with '# version: NAME'")
    version = lines[0][len(_VERSION_PREFIX) :].strip()
    sections: dict[str, list[str]] = {name: [] for name in _SECTIONS}
    current = "terms"
    for line in lines[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            if current not in _SECTIONS:
                raise ValueError(f"unknown vocabulary section [{current}]")
            continue
        if current == "phrases":
            sections[current].append(line)
        else:
            sections[current].extend(line.split())
    return version, sections


def _read(language: str) -> str:
    return resources.files(__package__).joinpath(f"{language}.txt").read_text("utf-8")


@lru_cache(maxsize=8)
def load_vocabulary(extra: frozenset[str] = frozenset()) -> Vocabulary:
    """The shipped vocabularies plus a campaign's ``extra`` terms, compiled (cached).

    Parameters
    ----------
    extra
        Terms the campaign adds (words or compounds; several words in one entry are
        added one by one).

    Returns
    -------
    Vocabulary
        Shared by every dataset of the campaign.
    """
    versions: list[str] = []
    words: list[str] = []
    units: list[str] = []
    ambiguous: list[str] = []
    phrases: list[str] = []
    for language in LANGUAGES:
        version, sections = parse_vocabulary(_read(language))
        versions.append(version)
        words += sections["terms"]
        units += sections["units"]
        ambiguous += sections["ambiguous"]
        phrases += sections["phrases"]
    added = sorted({word for entry in extra for word in entry.split()})
    if added:
        digest = hashlib.sha256("\n".join(added).encode("utf-8")).hexdigest()[:12]
        versions.append(f"+campaign:{digest}")
    words += added
    return _compile(" ".join(versions), words, units, ambiguous, phrases)


def _compile(
    version: str,
    words: Iterable[str],
    units: Iterable[str],
    ambiguous: Iterable[str],
    phrases: Iterable[str],
) -> Vocabulary:
    terms: set[str] = set()
    compounds: set[str] = set()
    marked: set[str] = set()
    for word in words:
        key = fold(word)
        if any(not c.isalnum() for c in key):
            compounds.add(key)
            continue
        terms.add(key)
        if has_marks(word):
            marked.add(lower_nfc(word))
    unit_keys = frozenset(fold(u) for u in units)
    # A unit is also a term where it stands after a number only; "mm" alone says nothing
    # either way, but a unit such as "Ma" is also a surname, so units are not terms.
    return Vocabulary(
        version=version,
        compounds=frozenset(compounds),
        terms=frozenset(terms),
        marked=frozenset(marked),
        units=unit_keys,
        ambiguous=frozenset(fold(a) for a in ambiguous),
        phrases=frozenset(
            (fold(pair[-2]), fold(pair[-1]))
            for pair in (p.split() for p in phrases)
            if len(pair) > 1
        ),
    )
