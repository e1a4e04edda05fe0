"""What every ``medai`` command shares: errors, exit codes, consoles, JSON, the set-up guard.

User-supplied text (paths, site names, label columns such as ``[labels]``) is printed as
rich :class:`~rich.text.Text`, never as markup: the consoles here have markup switched off,
so ``/data/[site-a]/x.dcm`` prints verbatim. Styled output is built from ``Text`` spans.
Only typer and rich are imported at module level, so ``medai --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn
    from sqlalchemy.orm import Session

    from medai.catalog.db import CatalogState
    from medai.config import Settings

__all__ = [
    "EXIT_PROBLEM",
    "EXIT_USER_ERROR",
    "INIT_COMMAND",
    "JsonFlag",
    "catalog_session",
    "console",
    "err_console",
    "fail",
    "jsonable",
    "not_set_up_message",
    "parse_date",
    "plain",
    "print_json",
    "progress_bar",
    "read_passphrase_file",
    "require_campaign",
    "row",
]

# A problem the user can fix (bad option, missing set-up): the status click uses for usage.
EXIT_USER_ERROR = 2
# A check that ran and found something wrong (verify, a refused promotion, a stopped pull).
EXIT_PROBLEM = 1
INIT_COMMAND = "medai campaign init CAMPAIGN.toml"

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
]


def console() -> Console:
    """A console on stdout that prints strings verbatim (no markup, no highlighting)."""
    # Built per call: the width is read from the terminal (or COLUMNS) when it is made.
    return Console(markup=False, highlight=False)


def err_console() -> Console:
    """The same on stderr: progress bars, errors and hints."""
    return Console(stderr=True, markup=False, highlight=False)


def plain(value: object, style: str = "") -> Text:
    """``value`` as text that rich prints exactly as given (brackets included)."""
    return Text(str(value), style=style)


def row(*values: object) -> list[Text]:
    """Table cells from values, each printed verbatim (``Text`` passes through)."""
    return [value if isinstance(value, Text) else plain(value) for value in values]


def progress_bar(*columns: ProgressColumn, **options: Any) -> Progress:
    """A progress bar on stderr: the description, a bar, then ``columns``.

    The description often holds a site id: it is printed verbatim, never read as markup.
    """
    from rich.progress import BarColumn, Progress, TextColumn

    description = TextColumn("{task.description}", markup=False, style="progress.description")
    return Progress(description, BarColumn(), *columns, console=err_console(), **options)


def fail(
    error: BaseException | str, hint: str | None = None, *, code: int = EXIT_USER_ERROR
) -> typer.Exit:
    """Print ``error`` in red on stderr, then ``hint``; return the exit to raise.

    Use as ``raise fail(exc) from None`` (no traceback: the message is the whole story).
    """
    out = err_console()
    out.print(plain(f"error: {error}", "red"), soft_wrap=True)
    if hint:
        out.print(plain(hint), soft_wrap=True)
    return typer.Exit(code)


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and models as dicts, dates as ISO text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):  # a pydantic model
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def parse_date(value: str) -> dt.date:
    """A day given as ``YYYY-MM-DD`` or ``YYYYMMDD`` (a typer ``parser=``).

    Raises
    ------
    typer.BadParameter
        Naming both accepted forms.
    """
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value.strip(), form).date()
        except ValueError:
            continue
    raise typer.BadParameter(f"{value!r} is not a date: give YYYY-MM-DD or YYYYMMDD")


def print_json(data: Any) -> None:
    """Print ``data`` as one JSON line on stdout, the last line of the output (for scripts).

    Dataclasses, pydantic models, dates and paths are converted; keys are sorted.
    """
    typer.echo(json.dumps(jsonable(data), sort_keys=True))


def _where(settings: Settings) -> str:
    """The setting that names the catalog, as the user gave it (never a password)."""
    if settings.database_url:
        from sqlalchemy.engine import make_url

        shown = make_url(settings.database_url).render_as_string(hide_password=True)
        return f"MEDAI_DATABASE_URL={shown}"
    return f"MEDAI_HOME={settings.resolved_home}"


def not_set_up_message(state: CatalogState, settings: Settings) -> str:
    """The one sentence saying what to run for a catalog in ``state`` (not ``ready``)."""
    where = _where(settings)
    if state == "unreachable":
        return (
            f"the catalog at {where} cannot be opened: start the database server or fix "
            f"MEDAI_DATABASE_URL, then run `{INIT_COMMAND}` if it is new"
        )
    if state == "outdated":
        return (
            f"the catalog at {where} has an older schema than this medai: run "
            f"`{INIT_COMMAND}` again to migrate it"
        )
    return f"no campaign is set up in {where}: run `{INIT_COMMAND}` first"


def require_campaign(settings: Settings | None = None, *, campaign: bool = True) -> None:
    """Stop the command with one sentence unless the catalog is reachable, migrated and set up.

    Parameters
    ----------
    settings
        Default: :func:`medai.config.get_settings`.
    campaign
        Also require a campaign (``False``: a migrated catalog is enough, e.g. for the
        audit log, which key changes write before any campaign exists).

    Raises
    ------
    typer.Exit
        With :data:`EXIT_USER_ERROR`, after printing a :class:`~medai.errors.CampaignNotSetUp`.
    """
    from medai.catalog.db import catalog_state
    from medai.config import get_settings
    from medai.errors import CampaignNotSetUp

    settings = settings or get_settings()
    state = catalog_state(settings.resolved_database_url)
    if state == "ready" or (state == "no-campaign" and not campaign):
        return
    raise fail(CampaignNotSetUp(not_set_up_message(state, settings)))


@contextmanager
def catalog_session(settings: Settings | None = None, *, write: bool = False) -> Iterator[Session]:
    """A session on the configured catalog; its engine is disposed afterwards.

    ``write``: one transaction, committed at the end (rolled back on an error). Otherwise a
    read that takes no write lock on SQLite, so it never waits behind an import. A catalog
    that fails underneath (the server went away, the file was replaced) ends the command
    with the sentence of :func:`require_campaign`, or the database's own error.
    """
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from medai.catalog.db import catalog_state, create_engine_for, session_factory
    from medai.config import get_settings

    settings = settings or get_settings()
    engine = create_engine_for(settings.resolved_database_url)
    try:
        if write:
            with session_factory(engine).begin() as session:
                yield session
        else:
            read = engine.execution_options(sqlite_begin="DEFERRED")
            with session_factory(read)() as session:
                yield session
    except (OperationalError, ProgrammingError) as exc:
        state = catalog_state(settings.resolved_database_url)
        if state != "ready":
            raise fail(not_set_up_message(state, settings)) from None
        raise fail(f"the catalog failed: {type(exc.orig).__name__}: {exc.orig}") from None
    finally:
        engine.dispose()


def read_passphrase_file(path: Path) -> str:
    """The first line of ``path``: a passphrase given in a file, never as an option value.

    Command lines end up in shell histories and ``ps`` listings, so passphrases come from a
    file, the environment or a hidden prompt; this is the file case, with its errors.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(
            f"cannot read the passphrase file {path} ({exc.__class__.__name__})",
            "Check the path and its permissions.",
        ) from None
    if not lines or not lines[0]:
        raise fail(f"the passphrase file {path} is empty", "Put the passphrase on its first line.")
    return lines[0]
