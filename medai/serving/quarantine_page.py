"""The dashboard's quarantine pages: the list with filters, one entry's header, the results.

Self-contained HTML like the rest of the dashboard (:mod:`medai.serving.dashboard_page`):
inline CSS, no scripts. Every word goes through the message catalogue of
:mod:`medai.serving.i18n` (``tests/serving/test_dashboard_i18n.py`` reads this module).
Elements carry ``data-*`` attributes with machine values (``data-entry``, ``data-status``,
``data-outcome``, ``data-keyword``) for tests and scrapers.

Nothing that may identify a patient is shown: entries are named by id, site, reason and
size (never the file name), and a header only by what
:mod:`medai.collection.quarantine_view` lets through. The forms that change something
(release, purge) carry the session's CSRF token (:mod:`medai.serving.quarantine_routes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Final
from urllib.parse import urlencode

from medai.collection.quarantine_actions import (
    ActionResult,
    EntryView,
    QuarantineFilter,
    QuarantinePage,
)
from medai.serving.i18n import N_, Translator

__all__ = [
    "OUTCOME_NAMES",
    "STATUS_NAMES",
    "render_confirm",
    "render_entry",
    "render_list",
    "render_results",
]

STATUS_NAMES: Final[Mapping[str, str]] = {
    "held": N_("held"),
    "released": N_("released (stored)"),
    "discarded": N_("purged by a steward"),
    "expired": N_("purged (retention, or restored without it)"),
}
OUTCOME_NAMES: Final[Mapping[str, str]] = {
    "released": N_("stored"),
    "released-duplicate": N_("already stored (duplicate)"),
    "requarantined": N_("quarantined again"),
    "discarded": N_("raw file deleted"),
    "missing": N_("raw file missing"),
    "refused": N_("not releasable (the site or its edge must send it again)"),
}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #212121; background: #fafafa; }
h1 { margin: 0 0 .25rem; font-size: 1.5rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { border-bottom: 1px solid #eee; padding: .3rem .5rem; text-align: left; font-size: .9rem; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #9e9e9e; } .note { color: #616161; } form.filters label { margin-right: .75rem; }
.alert { color: #c62828; font-weight: 600; } button { margin: .5rem .5rem .5rem 0; }
"""


def _name(t: Translator, names: Mapping[str, str], key: str) -> str:
    msgid = names.get(key)
    return t._(msgid) if msgid else key


def _page(t: Translator, title: str, body: str) -> str:
    back = escape(t._("Back to the dashboard"))
    listing = escape(t._("Quarantine"))
    return f"""<!doctype html>
<html lang="{t.language}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_STYLE}</style></head>
<body><nav><a href="/dashboard" data-link="dashboard">{back}</a> ·
<a href="/dashboard/quarantine" data-link="quarantine">{listing}</a></nav>
<h1>{escape(title)}</h1>
{body}</body></html>
"""


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'


def _filters(
    t: Translator, where: QuarantineFilter, sites: Sequence[str], reasons: Sequence[str]
) -> str:
    def options(name: str, values: Sequence[str], chosen: str | None) -> str:
        items = [f'<option value="">{escape(t._("any"))}</option>']
        for value in values:
            mark = " selected" if value == chosen else ""
            items.append(f'<option value="{escape(value)}"{mark}>{escape(value)}</option>')
        return f'<select name="{name}" id="f-{name}">{"".join(items)}</select>'

    statuses = "".join(
        f'<option value="{key}"{" selected" if key == where.status else ""}>{escape(label)}'
        "</option>"
        for key, label in (
            ("held", t._("held")),
            ("closed", t._("closed")),
            ("all", t._("all")),
        )
    )
    since = where.since.isoformat() if where.since else ""
    until = where.until.isoformat() if where.until else ""
    return (
        '<form class="filters" method="get" action="/dashboard/quarantine">'
        f"<label>{escape(t._('Site'))} {options('site', sites, where.site)}</label>"
        f"<label>{escape(t._('Reason'))} {options('reason', reasons, where.reason)}</label>"
        f'<label>{escape(t._("Received from"))} <input type="date" name="since" '
        f'value="{since}"></label>'
        f'<label>{escape(t._("to"))} <input type="date" name="until" value="{until}"></label>'
        f'<label>{escape(t._("Status"))} <select name="status" id="f-status">{statuses}'
        "</select></label>"
        f'<button type="submit" id="filter">{escape(t._("Filter"))}</button></form>'
    )


def _query(where: QuarantineFilter, page: int) -> str:
    pairs = {
        "site": where.site or "",
        "reason": where.reason or "",
        "since": where.since.isoformat() if where.since else "",
        "until": where.until.isoformat() if where.until else "",
        "status": where.status,
        "page": str(page),
    }
    return urlencode({k: v for k, v in pairs.items() if v})


def render_list(
    t: Translator,
    found: QuarantinePage,
    where: QuarantineFilter,
    *,
    sites: Sequence[str],
    reasons: Sequence[str],
    csrf: str,
) -> str:
    """The list page: filters, one page of entries with checkboxes, release/purge buttons."""
    heads = (
        "",
        t._("Entry"),
        t._("Site"),
        t._("Reason"),
        t._("Size (bytes)"),
        t._("Received"),
        t._("Status"),
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    rows = []
    for item in found.items:
        box = (
            f'<input type="checkbox" name="id" value="{item.id}" aria-label="{item.id}">'
            if item.status == "held"
            else ""
        )
        rows.append(
            f'<tr data-entry="{item.id}" data-status="{escape(item.status)}" '
            f'data-reason="{escape(item.reason_code)}" data-site="{escape(item.site)}">'
            f"<td>{box}</td>"
            f'<td><a href="/dashboard/quarantine/{item.id}">#{item.id}</a></td>'
            f"<td>{escape(item.site)}</td>"
            f'<td><code>{escape(item.reason_code)}</code><br><span class="note">'
            f"{escape(item.reason)}</span></td>"
            f'<td class="n">{escape(t.number(item.byte_size))}</td>'
            f"<td>{escape(t.datetime(item.received_at))}</td>"
            f"<td>{escape(_name(t, STATUS_NAMES, item.status))}</td></tr>"
        )
    table = (
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else f'<p class="muted" data-empty="1">{escape(t._("No entry matches."))}</p>'
    )
    pager = escape(
        t._(
            "Page %(page)s of %(pages)s, %(total)s entries.",
            page=t.number(found.page),
            pages=t.number(found.pages),
            total=t.number(found.total),
        )
    )
    links = []
    if found.page > 1:
        prev = escape(t._("Previous page"))
        links.append(f'<a href="?{_query(where, found.page - 1)}" rel="prev">{prev}</a>')
    if found.page < found.pages:
        nxt = escape(t._("Next page"))
        links.append(f'<a href="?{_query(where, found.page + 1)}" rel="next">{nxt}</a>')
    note = escape(
        t._(
            "Release offers the chosen files to the ingest again, under the current campaign "
            "rules and settings: stored ones are closed and their raw files deleted. Purge "
            "deletes their raw files now. Both are audited under your key."
        )
    )
    actions = (
        f'<p class="note">{note}</p>'
        f'<button type="submit" name="action" value="release" id="release">'
        f"{escape(t._('Release chosen'))}</button>"
        f'<button type="submit" name="action" value="purge" id="purge">'
        f"{escape(t._('Purge chosen'))}</button>"
    )
    body = (
        _filters(t, where, sites, reasons)
        + f'<form method="post" action="/dashboard/quarantine/action" id="entries">{_csrf(csrf)}'
        + table
        + f'<p data-kpi="pager">{pager} {" · ".join(links)}</p>'
        + (actions if any(item.status == "held" for item in found.items) else "")
        + "</form>"
    )
    return _page(t, t._("Quarantine"), body)


def render_entry(t: Translator, view: EntryView, *, csrf: str) -> str:
    """One entry: its facts, its header without identifying values, and its buttons."""
    item = view.item
    facts = [
        (t._("Site"), escape(item.site)),
        (t._("Received by"), escape(item.source)),
        (t._("Reason"), f"<code>{escape(item.reason_code)}</code> {escape(item.reason)}"),
        (t._("Size (bytes)"), escape(t.number(item.byte_size))),
        (t._("Received"), escape(t.datetime(item.received_at))),
        (t._("Status"), escape(_name(t, STATUS_NAMES, item.status))),
        ("sha256", f"<code>{escape(item.sha256)}</code>"),
    ]
    if item.closed_at is not None:
        facts.append((t._("Closed"), escape(t.datetime(item.closed_at))))
        facts.append((t._("Closed by"), escape(item.closed_by or "–")))
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in facts)
    body = f'<table data-entry="{item.id}" data-status="{escape(item.status)}">{rows}</table>'
    header = view.header
    if header is None:
        gone = t._("The raw file is no longer kept: there is no header to show.")
        body += f'<p class="muted" data-header="none">{escape(gone)}</p>'
    else:
        kind = t._("File: %(kind)s", kind=header.kind)
        body += f"<h2>{escape(t._('Header'))}</h2>"
        body += f'<p data-kind="{escape(header.kind)}">{escape(kind)}</p>'
        body += (
            f'<p class="note">{escape(t._("Values that may identify a patient are withheld."))}</p>'
        )
        if header.read_problem:
            stopped = t._("Reading stopped: %(problem)s", problem=header.read_problem)
            body += f'<p class="alert">{escape(stopped)}</p>'
        if header.elements:
            heads = (t._("Tag"), t._("Keyword"), "VR", t._("Length"), t._("Value"))
            head = "".join(f"<th>{escape(h)}</th>" for h in heads)
            withheld = escape(t._("withheld"))
            lines = []
            for e in header.elements:
                if e.value is not None:
                    value = f"<code>{escape(e.value)}</code>"
                else:
                    value = "" if e.vr == "SQ" else f'<span class="muted">{withheld}</span>'
                pad = f' style="padding-left:{0.5 + 1.2 * e.depth:.1f}rem"' if e.depth else ""
                length = "" if e.length is None else escape(t.number(e.length))
                lines.append(
                    f'<tr data-keyword="{escape(e.keyword)}" data-withheld="'
                    f'{"1" if e.withheld else "0"}"><td{pad}><code>{escape(e.tag)}</code></td>'
                    f"<td>{escape(e.keyword)}</td><td>{escape(e.vr)}</td>"
                    f'<td class="n">{length}</td><td>{value}</td></tr>'
                )
            body += (
                f'<table data-table="header"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(lines)}</tbody></table>"
            )
    if item.status == "held":
        body += (
            f'<form method="post" action="/dashboard/quarantine/action">{_csrf(csrf)}'
            f'<input type="hidden" name="id" value="{item.id}">'
            f'<button type="submit" name="action" value="release" id="release">'
            f"{escape(t._('Release'))}</button>"
            f'<button type="submit" name="action" value="purge" id="purge">'
            f"{escape(t._('Purge'))}</button></form>"
        )
    return _page(t, t._("Quarantine entry #%(id)s", id=item.id), body)


def render_confirm(t: Translator, ids: Sequence[int], *, csrf: str) -> str:
    """Asks once more before raw files are deleted (no script: a second form)."""
    question = t._(
        "Delete the raw files of %(count)s entries now? This cannot be undone; the "
        "catalog keeps their rows.",
        count=t.number(len(ids)),
    )
    hidden = "".join(f'<input type="hidden" name="id" value="{i}">' for i in ids)
    chosen = ", ".join(f"#{i}" for i in ids)
    body = (
        f'<p class="alert" data-confirm="purge">{escape(question)}</p><p>{escape(chosen)}</p>'
        f'<form method="post" action="/dashboard/quarantine/action">{_csrf(csrf)}{hidden}'
        '<input type="hidden" name="confirm" value="yes">'
        f'<button type="submit" name="action" value="purge" id="confirm-purge">'
        f"{escape(t._('Purge'))}</button></form>"
        f'<p><a href="/dashboard/quarantine" id="cancel">{escape(t._("Cancel"))}</a></p>'
    )
    return _page(t, t._("Purge raw files"), body)


def render_results(t: Translator, action: str, results: Sequence[ActionResult]) -> str:
    """What a release or a purge did, entry by entry."""
    heads = (t._("Entry"), t._("Site"), t._("Outcome"), t._("Reason"))
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    rows = "".join(
        f'<tr data-entry="{r.id}" data-outcome="{escape(r.outcome)}">'
        f'<td><a href="/dashboard/quarantine/{r.id}">#{r.id}</a></td><td>{escape(r.site)}</td>'
        f"<td>{escape(_name(t, OUTCOME_NAMES, r.outcome))}</td>"
        f"<td><code>{escape(r.reason_code or '')}</code></td></tr>"
        for r in results
    )
    body = (
        f'<table data-results="{escape(action)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        if results
        else f'<p class="muted" data-results="none">{escape(t._("Nothing was done."))}</p>'
    )
    title = t._("Release results") if action == "release" else t._("Purge results")
    return _page(t, title, body)
