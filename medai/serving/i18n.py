"""The dashboard's languages: English and Vietnamese, from message catalogues kept as data.

The catalogues are gettext ``.po`` files shipped with the package,
``medai/serving/locales/<lang>/LC_MESSAGES/medai.po``, read once per process with Babel
(:func:`babel.messages.pofile.read_po`): nothing is compiled, so editing a translation is
editing a text file. The English text is the message id; the English catalogue has empty
translations (the id is shown), the Vietnamese one translates every id (a test extracts
the ids from the code with Babel and checks each has a Vietnamese text with the same
``%(name)s`` placeholders). A message missing from a catalogue is shown in English, never
as an error.

Which language a request gets (:func:`negotiate`): ``?lang=vi|en`` first (the dashboard
then keeps it in the ``medai_lang`` cookie), else that cookie, else the browser's
``Accept-Language`` (highest q-value first), else English.

Numbers, percentages, dates and durations are formatted with Babel in the page's locale
(vi: ``1.234,5``, ``43%``, ``19/12/2026``, ``3 giờ trước``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from importlib.resources import files
from typing import Final

from babel.core import Locale
from babel.dates import format_date, format_datetime, format_timedelta
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent

__all__ = [
    "DEFAULT_LANGUAGE",
    "DOMAIN",
    "LANGUAGES",
    "LANG_COOKIE",
    "N_",
    "Translator",
    "catalog",
    "catalog_path",
    "load_catalogues",
    "negotiate",
    "parse_accept_language",
]

LANGUAGES: Final = ("en", "vi")
"""The languages the dashboard speaks; the first is the default."""
DEFAULT_LANGUAGE: Final = "en"
LANG_COOKIE: Final = "medai_lang"
DOMAIN: Final = "medai"

# Dates as people of each language write them: "Dec 19, 2026" and "19/12/2026".
_DATE: Final = {"en": "MMM d, y", "vi": "dd/MM/yyyy"}
_SHORT_DAY: Final = {"en": "d MMM", "vi": "dd/MM"}
_DATETIME: Final = {"en": "MMM d, y HH:mm", "vi": "HH:mm dd/MM/yyyy"}
_MAX_ACCEPT_LANGUAGE: Final = 512


def N_(message: str) -> str:
    """Mark ``message`` for the catalogue without translating it (translated where shown)."""
    return message


def catalog_path(language: str) -> str:
    """Where the catalogue of ``language`` lives in the package (for tests and tools)."""
    resource = files("medai.serving") / "locales" / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    return str(resource)


@functools.cache
def catalog(language: str) -> Catalog:
    """The parsed catalogue of ``language`` (read once per process)."""
    resource = files("medai.serving") / "locales" / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    with resource.open("rb") as po:
        return read_po(po, locale=language, domain=DOMAIN)


def load_catalogues() -> None:
    """Read every catalogue now.

    The service calls it as it starts, so a damaged catalogue stops it at start rather
    than at a steward's first visit.
    """
    for language in LANGUAGES:
        _messages(language)


@functools.cache
def _messages(language: str) -> Mapping[str, str]:
    """msgid -> msgstr of ``language``: translated, non-fuzzy entries only."""
    table: dict[str, str] = {}
    for message in catalog(language):
        if message.id and isinstance(message.id, str) and isinstance(message.string, str):
            if message.string and not message.fuzzy:
                table[message.id] = message.string
    return table


def parse_accept_language(header: str | None) -> list[str]:
    """The language tags of an ``Accept-Language`` header, most wanted first.

    Tags with ``q=0`` are dropped; equal q-values keep the header's order. A malformed
    q-value counts as 0 (the tag is not wanted), and a huge header is cut short.
    """
    if not header:
        return []
    wanted: list[tuple[float, int, str]] = []
    for index, item in enumerate(header[:_MAX_ACCEPT_LANGUAGE].split(",")):
        tag, *params = (part.strip() for part in item.split(";"))
        if not tag:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if 0 < quality <= 1:
            wanted.append((-quality, index, tag.lower()))
    return [tag for _, _, tag in sorted(wanted)]


def _supported(tag: str | None) -> str | None:
    if not tag:
        return None
    primary = tag.strip().lower().replace("_", "-").split("-")[0]
    return primary if primary in LANGUAGES else None


def negotiate(
    query: str | None, cookie: str | None, accept_language: str | None
) -> tuple[str, bool]:
    """The page's language and whether it was asked for explicitly (``?lang=``).

    ``?lang=`` wins, then the ``medai_lang`` cookie, then the first supported language
    of ``Accept-Language`` (``*`` means the default), else English.
    """
    chosen = _supported(query)
    if chosen:
        return chosen, True
    chosen = _supported(cookie)
    if chosen:
        return chosen, False
    for tag in parse_accept_language(accept_language):
        if tag == "*":
            return DEFAULT_LANGUAGE, False
        chosen = _supported(tag)
        if chosen:
            return chosen, False
    return DEFAULT_LANGUAGE, False


class Translator:
    """Messages and formats of one language.

    Parameters
    ----------
    language
        One of :data:`LANGUAGES` (anything else is English).
    """

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else DEFAULT_LANGUAGE
        self.locale = Locale.parse(self.language)
        self._table = _messages(self.language)

    def has(self, msgid: str) -> bool:
        """Whether ``msgid`` has a translation in this language (English always has)."""
        return self.language == DEFAULT_LANGUAGE or msgid in self._table

    def _(self, msgid: str, **args: object) -> str:
        """``msgid`` in this language, its ``%(name)s`` placeholders filled from ``args``.

        A message missing from the catalogue is the English one; a translation whose
        placeholders do not match ``args`` falls back to the English too.
        """
        text = self._table.get(msgid, msgid)
        if not args:
            return text
        try:
            return text % args
        except (KeyError, ValueError, TypeError):
            return msgid % args

    # Formats -----------------------------------------------------------------

    def number(self, value: float | int, digits: int = 0) -> str:
        """``value`` with the locale's separators (vi: ``1.234,5``)."""
        pattern = "#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(value, format=pattern, locale=self.locale)

    def percent(self, fraction: float | None, digits: int = 0) -> str:
        """A fraction as a percentage (``0.43`` -> ``43%``); ``–`` for None."""
        if fraction is None:
            return "–"
        pattern = "#,##0" + ("." + "0" * digits if digits else "") + "%"
        return format_percent(fraction, format=pattern, locale=self.locale)

    def date(self, day: dt.date | None) -> str:
        """A day as the language writes it (en ``Dec 19, 2026``, vi ``19/12/2026``)."""
        return "–" if day is None else format_date(day, _DATE[self.language], locale=self.locale)

    def short_day(self, day: dt.date) -> str:
        """A day without its year, for chart axes (en ``19 Dec``, vi ``19/12``)."""
        return format_date(day, _SHORT_DAY[self.language], locale=self.locale)

    def datetime(self, moment: dt.datetime) -> str:
        """A moment in UTC, to the minute, with ``UTC`` after it."""
        utc = moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        shown = format_datetime(utc, _DATETIME[self.language], tzinfo=dt.UTC, locale=self.locale)
        return f"{shown} UTC"

    def ago(self, moment: dt.datetime, now: dt.datetime) -> str:
        """How long ago ``moment`` was (en ``3h ago``, vi ``3 giờ trước``)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        # Never "in 0 seconds": a moment at (or, clocks apart, after) now was a second ago.
        delta = min(dt.timedelta(seconds=-1), moment - now)
        return format_timedelta(
            delta, add_direction=True, format="narrow", threshold=1.0, locale=self.locale
        )

    def duration(self, seconds: float) -> str:
        """A length of time (en ``2h``, vi ``2 tiếng``)."""
        return format_timedelta(
            dt.timedelta(seconds=max(0.0, seconds)),
            format="narrow",
            threshold=1.0,
            locale=self.locale,
        )
