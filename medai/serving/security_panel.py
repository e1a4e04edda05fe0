"""The dashboard's security panel: the security events of the last 24 hours and 7 days.

Rendered from the summaries of :func:`medai.ops.security.security_status` (the same figures
as ``medai security status``), in the page's language: every word goes through the message
catalogue of :mod:`medai.serving.i18n` (``tests/serving/test_dashboard_i18n.py`` reads this
module too). Elements carry ``data-*`` attributes with the machine values (``data-kind``,
``data-window``, ``data-value``, ``data-alert``) for tests and scrapers.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Final

from medai.ops.security import KINDS, SecuritySummary
from medai.serving.i18n import N_, Translator

__all__ = ["ALERT_NAMES", "KIND_NAMES", "render_security_panel"]

KIND_NAMES: Final[Mapping[str, str]] = {
    "auth-failed": N_("Failed authentication (wrong or malformed key)"),
    "revoked-key-used": N_("Revoked key used"),
    "rate-limited": N_("Addresses throttled for failed authentication"),
    "key-mismatch": N_("Campaign key refused (another fingerprint)"),
    "association-rejected": N_("DICOM associations rejected"),
    "gate-override": N_("Promotion gate overridden"),
}
"""Each kind of security event as the page names it (msgids of the catalogue)."""

ALERT_NAMES: Final[Mapping[str, str]] = {
    "rate-limited": N_("An address was throttled for failed authentication."),
    "key-mismatch": N_("A campaign key with another fingerprint was refused."),
    "revoked-key-used": N_("A revoked API key was used."),
    "quarantine-spike": N_("Quarantine spike: see below."),
    "backup-missing": N_("No backup recorded: run medai backup create."),
    "backup-stale": N_("The last backup is too old."),
}
"""The alerts of a summary, as the page words them (msgids of the catalogue)."""

_ALERT_COLOUR = "#c62828"


def _kind_name(t: Translator, kind: str) -> str:
    msgid = KIND_NAMES.get(kind)
    return t._(msgid) if msgid else kind


def _events_table(t: Translator, windows: Mapping[str, SecuritySummary]) -> str:
    heads = (t._("Event"), t._("Last 24 hours"), t._("Last 7 days"), t._("Latest"))
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    day, week = windows["24h"], windows["7d"]
    rows = []
    for kind in KINDS:
        cells = [f"<td>{escape(_kind_name(t, kind))}</td>"]
        for name, summary in (("24h", day), ("7d", week)):
            count = summary.events.get(kind, 0)
            style = f' style="color:{_ALERT_COLOUR};font-weight:600"' if count else ""
            cells.append(
                f'<td class="n" data-window="{name}" data-value="{count}"{style}>'
                f"{escape(t.number(count))}</td>"
            )
        seen = week.last_seen.get(kind)
        if seen is None:
            cells.append(f'<td class="muted">{escape(t._("none yet"))}</td>')
        else:
            cells.append(
                f'<td data-value="{escape(seen.isoformat())}" title="{escape(t.datetime(seen))}">'
                f"{escape(t.ago(seen, week.until))}</td>"
            )
        rows.append(f'<tr data-kind="{escape(kind)}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _sources(t: Translator, summary: SecuritySummary) -> str:
    title = escape(t._("Top sources (7 days)"))
    if not summary.top_sources:
        nothing = escape(t._("No source of security events."))
        return f'<h3>{title}</h3><p class="muted" data-kpi="security_sources">{nothing}</p>'
    heads = (t._("Source"), t._("Events"), t._("Kinds"), t._("Latest"))
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    rows = []
    for source in summary.top_sources:
        kinds = ", ".join(_kind_name(t, kind) for kind in source.kinds)
        rows.append(
            f'<tr data-source="{escape(source.source)}"><td><code>{escape(source.source)}</code>'
            f'</td><td class="n" data-value="{source.events}">{escape(t.number(source.events))}'
            f"</td><td>{escape(kinds)}</td>"
            f"<td>{escape(t.ago(source.last_seen, summary.until))}</td></tr>"
        )
    return (
        f'<h3>{title}</h3><table data-kpi="security_sources"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _spikes(t: Translator, summary: SecuritySummary) -> str:
    title = escape(t._("Quarantine spikes (7 days)"))
    if not summary.quarantine_spikes:
        nothing = escape(t._("No quarantine spike."))
        return f'<h3>{title}</h3><p class="muted" data-kpi="quarantine_spikes">{nothing}</p>'
    items = []
    for spike in summary.quarantine_spikes:
        text = t._(
            "%(site)s: %(count)s quarantined for %(reason)s on %(day)s (usually %(mean)s a day)",
            site=spike.site,
            count=t.number(spike.count),
            reason=spike.reason,
            day=t.date(spike.day),
            mean=t.number(spike.baseline_mean, 1),
        )
        items.append(
            f'<li data-site="{escape(spike.site)}" data-reason="{escape(spike.reason)}" '
            f'data-value="{spike.count}">{escape(text)}</li>'
        )
    return f'<h3>{title}</h3><ul data-kpi="quarantine_spikes">{"".join(items)}</ul>'


def _backup(t: Translator, summary: SecuritySummary) -> str:
    state = summary.backup
    if state.last is None:
        text = t._("No backup recorded.")
    else:
        text = t._(
            "Last backup %(when)s (stale after %(hours)s h).",
            when=t.ago(state.last, summary.until),
            hours=t.number(state.stale_hours),
        )
    style = "" if state.status == "ok" else f' style="color:{_ALERT_COLOUR};font-weight:600"'
    return f'<p data-kpi="backup" data-status="{escape(state.status)}"{style}>{escape(text)}</p>'


def render_security_panel(t: Translator, windows: Mapping[str, SecuritySummary]) -> str:
    """The security section of the dashboard for the summaries ``"24h"`` and ``"7d"``."""
    week = windows["7d"]
    alerts = "".join(
        f'<li data-alert="{escape(alert)}">{escape(t._(ALERT_NAMES[alert]))}</li>'
        for alert in windows["24h"].alerts
        if alert in ALERT_NAMES
    )
    banner = (
        f'<ul data-kpi="security_alerts" style="color:{_ALERT_COLOUR};font-weight:600">'
        f"{alerts}</ul>"
        if alerts
        else f'<p class="muted" data-kpi="security_alerts">{escape(t._("No alert."))}</p>'
    )
    heading = escape(t._("Security"))
    return (
        f'<section data-panel="security"><h2 data-heading="security">{heading}</h2>'
        f"{banner}{_events_table(t, windows)}{_sources(t, week)}{_spikes(t, week)}"
        f"{_backup(t, week)}</section>"
    )
