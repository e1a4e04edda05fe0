"""The dashboard's monitoring panel: the served model's drift status and clinicians' agreement.

Rendered from the report of :meth:`medai.serving.monitoring.monitor.DriftMonitor.report`
(the JSON of ``GET /v1/models/{name}/monitoring``), in the page's language: every word goes
through the message catalogue (``tests/serving/test_dashboard_i18n.py`` reads this module).
It imports nothing of the monitoring router, so the dashboard stays independent of it.
Elements carry ``data-*`` attributes with the machine values (``data-site``,
``data-status``, ``data-value``) for tests and scrapers.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any, Final

from medai.serving.i18n import N_, Translator

__all__ = ["STATUS_WORDS", "render_monitoring_panel"]

STATUS_WORDS: Final[Mapping[str, str]] = {
    "unknown": N_("unknown"),
    "ok": N_("stable"),
    "warn": N_("warning"),
    "drift": N_("drift"),
}
"""The monitoring statuses as the page names them (msgids of the catalogue)."""

_COLOURS = {"unknown": "#757575", "ok": "#2e7d32", "warn": "#ef6c00", "drift": "#c62828"}


def _status(t: Translator, status: str) -> str:
    word = escape(t._(STATUS_WORDS.get(status, "unknown")))
    colour = _COLOURS.get(status, _COLOURS["unknown"])
    return (
        f'<span data-status="{escape(status)}" style="color:{colour};font-weight:600">{word}</span>'
    )


def _row(t: Translator, site: str, label: str, group: Mapping[str, Any]) -> str:
    drifting = [
        f["feature"] for f in group.get("features", []) if f.get("status") in ("warn", "drift")
    ]
    count = int(group.get("predictions", 0))
    return (
        f'<tr data-site="{escape(site)}"><td>{escape(label)}</td>'
        f"<td>{_status(t, str(group.get('status', 'unknown')))}</td>"
        f'<td class="n" data-value="{count}">{escape(t.number(count))}</td>'
        f"<td>{escape(', '.join(drifting) or t._('none'))}</td></tr>"
    )


def _feedback(t: Translator, feedback: Mapping[str, Mapping[str, Any]]) -> str:
    title = escape(t._("Clinician agreement"))
    if not feedback:
        nothing = escape(t._("No clinician feedback yet."))
        return f'<h3>{title}</h3><p class="muted" data-kpi="feedback">{nothing}</p>'
    heads = (t._("Finding"), t._("Agree"), t._("Disagree"), t._("Agreement"))
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    rows = "".join(
        f'<tr data-finding="{escape(name)}"><td>{escape(name)}</td>'
        f'<td class="n">{escape(t.number(entry["agree"]))}</td>'
        f'<td class="n">{escape(t.number(entry["disagree"]))}</td>'
        f'<td class="n" data-value="{entry["agreement"]:.4f}">'
        f"{escape(t.percent(entry['agreement']))}</td></tr>"
        for name, entry in sorted(feedback.items())
    )
    return (
        f'<h3>{title}</h3><table data-kpi="feedback"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def render_monitoring_panel(t: Translator, report: Mapping[str, Any]) -> str:
    """The monitoring section of the dashboard for one served version's ``report``."""
    heading = escape(t._("Model monitoring"))
    served = escape(
        t._("%(model)s version %(version)s", model=report["model"], version=report["version"])
    )
    notice = ""
    if not report.get("baseline"):
        text = t._("No baseline: this version was trained without a monitoring reference.")
        notice = (
            f'<p data-kpi="baseline" style="color:{_COLOURS["warn"]};font-weight:600">'
            f"{escape(text)}</p>"
        )
    heads = (t._("Site"), t._("Status"), t._("Predictions"), t._("Features shifting"))
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    rows = _row(t, "", t._("all sites"), report["overall"]) + "".join(
        _row(t, site, site, group) for site, group in report.get("sites", {}).items()
    )
    return (
        f'<section data-panel="monitoring"><h2 data-heading="monitoring">{heading}</h2>'
        f'<p data-kpi="monitoring_status">{served}: {_status(t, str(report["status"]))}</p>'
        f"{notice}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        f"{_feedback(t, report.get('feedback', {}))}</section>"
    )
