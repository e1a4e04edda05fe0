"""The edge's heartbeat: every MEDAI_EDGE_HEARTBEAT_SECONDS, tell the centre how the site is.

``POST /v1/edge/heartbeat`` carries the edge's version and clock, its outbox depth and the
age of its oldest unsent instance, today's counts (received, forwarded, quarantined on site)
and its receipts (per receipt day: count and hash of the pseudonymized SOP Instance UIDs).
The centre answers with its time and its own receipts of the site; the answer is kept in the
outbox database, so ``medai edge status`` shows the last one even after a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medai import __version__

if TYPE_CHECKING:
    import httpx
    from sqlalchemy import Engine

    from medai.edge.outbox import Outbox

__all__ = ["Heartbeat", "heartbeat_body"]

logger = logging.getLogger(__name__)


def heartbeat_body(
    outbox: Outbox, engine: Engine | None, *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The heartbeat's JSON body (the contract's fields), from the outbox and the catalog."""
    from medai.edge.outbox import quarantined_on

    moment = now or dt.datetime.now(dt.UTC)
    today = moment.astimezone(dt.UTC).date()
    stats = outbox.stats(now=moment.timestamp())
    return {
        "version": __version__,
        "sent_at": moment.astimezone(dt.UTC).isoformat(),
        "outbox_depth": stats.depth,
        "oldest_unsent_seconds": stats.oldest_unsent_seconds,
        "received_today": outbox.received_on(today),
        "forwarded_today": outbox.forwarded_on(today),
        "quarantined_today": quarantined_on(engine, today) if engine is not None else 0,
        "receipts": outbox.receipts(),
    }


class Heartbeat:
    """Posts heartbeats until stopped; keeps the centre's last answer in the outbox."""

    def __init__(
        self,
        outbox: Outbox,
        engine: Engine | None,
        client: httpx.Client,
        *,
        interval: float = 60.0,
        before: Callable[[], object] = lambda: None,
    ) -> None:
        self.outbox, self.engine, self.client = outbox, engine, client
        self.interval = interval
        self.before = before
        self.sent = 0

    def beat(self) -> dict[str, Any] | None:
        """Send one heartbeat; return the centre's answer (None when it failed)."""
        import httpx

        try:
            self.before()  # e.g. fill the outbox, so the depth counts what just arrived
            body = heartbeat_body(self.outbox, self.engine)
        except Exception as exc:  # the catalog busy: report next time
            logger.warning("heartbeat not built (%s)", exc.__class__.__name__)
            return None
        now = dt.datetime.now(dt.UTC).isoformat()
        state = self.outbox.get_state("heartbeat") or {}
        state["last_attempt_at"] = now
        try:
            response = self.client.post("/v1/edge/heartbeat", json=body)
            response.raise_for_status()
            answer = response.json()
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except (httpx.HTTPError, ValueError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            state["last_error"] = f"HTTP {status}" if status else exc.__class__.__name__
            self.outbox.put_state("heartbeat", state)
            logger.warning("heartbeat to the centre failed (%s)", state["last_error"])
            return None
        state.update({"last_success_at": now, "last_error": None, "answer": answer})
        self.outbox.put_state("heartbeat", state)
        self.sent += 1
        return answer

    def run(self, stop: threading.Event) -> None:
        """Beat at once, then every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.beat()
            stop.wait(self.interval)
