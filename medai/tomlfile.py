"""Reading the TOML files people edit (campaigns, model configs) with errors that name the field."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medai.errors import MedaiError

__all__ = ["format_validation_errors", "read_toml"]


def read_toml(path: Path | str, *, error: type[MedaiError], missing: str) -> dict[str, Any]:
    """The parsed file, or ``error`` with a message naming the file and what is wrong.

    Parameters
    ----------
    path
        The TOML file.
    error
        The domain error to raise (e.g. :class:`~medai.errors.CampaignError`).
    missing
        What to say when the file does not exist, e.g. ``"no such campaign file"``.
    """
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise error(f"{source}: {missing}") from None
    except OSError as exc:
        raise error(f"{source}: cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError:
        raise error(f"{source}: TOML syntax error: the file is not UTF-8") from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def format_validation_errors(source: str, exc: ValidationError) -> str:
    """One line per invalid field: ``SOURCE: field.path[0]: what is wrong``.

    A validator may name a field below the one it validates by putting ``field`` (a
    relative path) in the error's context; it is appended to the location.
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = _field_path(tuple(error["loc"]))
        extra = (error.get("ctx") or {}).get("field")
        if extra:
            loc = f"{loc}.{extra}" if loc and not extra.startswith("[") else loc + extra
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling)"
        lines.append(f"{source}: {loc or '(top level)'}: {message}")
    return "\n".join(lines)
