"""The hospital-side edge gateway: de-identify on site, forward to the centre, prove custody.

An edge is an ordinary medai home (its own catalog, store, quarantine and the campaign key)
set up from a site kit (:mod:`medai.edge.kit`). Its receivers run the standard ingest
pipeline, so nothing identified leaves the hospital; :mod:`medai.edge.outbox` indexes the
stored instances until the centre acknowledges them, :mod:`medai.edge.forwarder` sends them
by STOW-RS, :mod:`medai.edge.heartbeat` reports to the centre, :mod:`medai.edge.reconcile`
compares both sides' receipts, and :mod:`medai.edge.gateway` runs it all as one service.
"""

from __future__ import annotations

__all__: list[str] = []
