"""Who acted, spelled one way in every audit record: a person, a part of medai, a web caller."""

from __future__ import annotations

import getpass

__all__ = ["api_key", "operator", "site", "system"]

# The parts of medai that act on their own; an unknown part is refused so a typo
# cannot start a second spelling of the same actor in the chain.
SYSTEM_PARTS = frozenset(
    {
        "cstore",
        "demo",
        "import",
        "ingest",
        "labels",
        "pull",
        "retention",
        "security",
        "serve",
        "snapshots",
        "stow",
        "study-completion",
        "training",
    }
)


def operator() -> str:
    """A person at the command line: ``user:<login>``, ``user:unknown`` when there is no login."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        login = ""
    return f"user:{login or 'unknown'}"


def system(part: str) -> str:
    """A part of medai acting on its own, e.g. ``system:import`` (``part`` in SYSTEM_PARTS)."""
    if part not in SYSTEM_PARTS:
        raise ValueError(f"unknown system actor {part!r}: one of {', '.join(sorted(SYSTEM_PARTS))}")
    return f"system:{part}"


def api_key(name: str) -> str:
    """A web caller, named by its API key: ``apikey:<name>``."""
    return f"apikey:{name}"


def site(site_id: str) -> str:
    """A hospital site acting through its own channel (AE title, STOW key): ``site:<id>``."""
    return f"site:{site_id}"
