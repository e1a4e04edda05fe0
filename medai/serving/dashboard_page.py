"""The campaign dashboard as one self-contained HTML page (inline CSS and SVG, no scripts
from elsewhere: the hospital network may have no internet access).

Rendered on the server from :class:`~medai.collection.campaign.report.CampaignProgress`, so the
page shows exactly the numbers of ``medai campaign status`` and of the export. Elements
carry ``data-*`` attributes naming what they show, for the browser tests and for anyone
scraping the page.
"""

from __future__ import annotations

import datetime as dt
from html import escape

from medai.collection.campaign.report import CampaignProgress, SiteProgress

__all__ = ["REFRESH_SECONDS", "render_dashboard", "render_login"]

REFRESH_SECONDS = 30
_STATUS_COLOURS = {
    "late": "#c62828",
    "at risk": "#ef6c00",
    "on track": "#2e7d32",
    "complete": "#1565c0",
    "no targets": "#757575",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #212121; background: #fafafa; }
h1 { margin: 0 0 .25rem; font-size: 1.5rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.sub { color: #616161; margin-bottom: 1rem; }
.tiles { display: flex; flex-wrap: wrap; gap: .75rem; }
.tile { background: #fff; border: 1px solid #e0e0e0; border-radius: 6px; padding: .6rem .9rem;
        min-width: 8rem; }
.tile .v { font-size: 1.4rem; font-weight: 600; } .tile .k { color: #616161; font-size: .8rem; }
.pill { color: #fff; border-radius: 999px; padding: .1rem .6rem; font-size: .8rem;
        white-space: nowrap; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { border-bottom: 1px solid #eee; padding: .4rem .5rem; text-align: left; font-size: .9rem; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { position: relative; background: #eceff1; height: .9rem; border-radius: 3px; width: 12rem; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 3px; }
.bar .plan { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #212121; }
svg text { font-size: 11px; fill: #424242; }
.muted { color: #9e9e9e; }
"""


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _pill(status: str) -> str:
    colour = _STATUS_COLOURS.get(status, "#757575")
    return (
        f'<span class="pill" style="background:{colour}" data-status="{escape(status)}">'
        f"{escape(status)}</span>"
    )


def _tile(key: str, label: str, value: str) -> str:
    return (
        f'<div class="tile"><div class="v" data-kpi="{key}">{escape(value)}</div>'
        f'<div class="k">{escape(label)}</div></div>'
    )


def _burnup_svg(report: CampaignProgress, width: int = 720, height: int = 240) -> str:
    """Plan (dashed) and actual (solid) progress over every day of the campaign."""
    left, right, top, bottom = 40, 10, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    days = len(report.burnup)

    def x(index: int) -> float:
        return left + (plot_w * index / max(1, days - 1))

    def y(value: float) -> float:
        return top + plot_h * (1 - value)

    parts = [
        f'<svg role="img" aria-label="Burn-up: plan and actual progress" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-chart="burnup">'
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#e0e0e0"/><text x="4" y="{y(tick) + 4:.1f}">{tick * 100:.0f}%</text>'
        )
    for index in range(0, days, 15):
        day = report.burnup[index].day
        parts.append(
            f'<text x="{x(index) - 14:.1f}" y="{height - 8}">{day.strftime("%d %b")}</text>'
        )
    plan = " ".join(f"{x(i):.1f},{y(p.planned):.1f}" for i, p in enumerate(report.burnup))
    parts.append(
        f'<polyline points="{plan}" fill="none" stroke="#757575" stroke-width="2" '
        f'stroke-dasharray="6 4" data-series="planned"/>'
    )
    actual = [(i, p.actual) for i, p in enumerate(report.burnup) if p.actual is not None]
    if actual:
        points = " ".join(f"{x(i):.1f},{y(a):.1f}" for i, a in actual)
        colour = _STATUS_COLOURS.get(report.status, "#1565c0")
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="3" '
            f'data-series="actual"/>'
        )
        last_i, last_a = actual[-1]
        parts.append(f'<circle cx="{x(last_i):.1f}" cy="{y(last_a):.1f}" r="4" fill="{colour}"/>')
    parts.append(f'<text x="{left + 8}" y="{top + 14}">— actual   - - plan</text></svg>')
    return "".join(parts)


def _reasons_svg(reasons: dict[str, int], width: int = 420) -> str:
    """Quarantined inputs by reason, as horizontal bars."""
    if not reasons:
        return '<p class="muted" data-chart="quarantine">Nothing quarantined.</p>'
    row_h, label_w = 22, 170
    top = max(reasons.values())
    height = row_h * len(reasons) + 4
    parts = [
        f'<svg role="img" aria-label="Quarantined inputs by reason" width="{width}" '
        f'height="{height}" data-chart="quarantine">'
    ]
    for index, (reason, count) in enumerate(sorted(reasons.items(), key=lambda kv: -kv[1])):
        bar = (width - label_w - 50) * count / top
        y = index * row_h + 2
        parts.append(
            f'<text x="0" y="{y + 14}">{escape(reason)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{bar:.1f}" height="{row_h - 8}" '
            f'fill="#ef6c00"/><text x="{label_w + bar + 6:.1f}" y="{y + 14}" '
            f'data-reason="{escape(reason)}">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _progress_bar(site: SiteProgress) -> str:
    if site.progress is None:
        return '<span class="muted">no targets</span>'
    colour = _STATUS_COLOURS.get(site.status, "#757575")
    done = min(100.0, site.progress * 100)
    plan = min(100.0, site.expected_progress * 100)
    return (
        f'<div class="bar" title="{done:.0f}% done, plan {plan:.0f}%">'
        f'<div class="fill" style="width:{done:.1f}%;background:{colour}"></div>'
        f'<div class="plan" style="left:{plan:.1f}%"></div></div>'
    )


def _site_row(site: SiteProgress) -> str:
    projected = "done" if site.completed else str(site.projected_completion or "–")
    rate = "–" if site.rate_7d is None else f"{site.rate_7d * 100:.2f}%/day"
    cells = [
        f"<td><strong>{escape(site.site)}</strong><br><span class='muted'>"
        f"{escape(site.name)}</span></td>",
        f"<td>{_pill(site.status)}</td>",
        f"<td>{_progress_bar(site)}</td>",
        f'<td class="n" data-kpi="progress">{_pct(site.progress)}</td>',
        f'<td class="n" data-kpi="studies">{site.studies}</td>',
        f'<td class="n" data-kpi="instances">{site.instances}</td>',
        f'<td class="n" data-kpi="rate_7d">{rate}</td>',
        f'<td class="n" data-kpi="projected">{escape(projected)}</td>',
        f'<td class="n" data-kpi="quarantined">{site.quarantined} '
        f"({site.rejection_rate * 100:.1f}%)</td>",
        f'<td class="n" data-kpi="labelled">{site.labelled_studies} '
        f"({site.label_coverage * 100:.0f}%)</td>",
    ]
    return f'<tr data-site="{escape(site.site)}">{"".join(cells)}</tr>'


def _targets_table(report: CampaignProgress) -> str:
    rows = []
    for site in report.sites:
        for target in site.targets:
            what = " ".join(v for v in (target.modality, target.body_part, target.finding) if v)
            rows.append(
                f"<tr><td>{escape(site.site)}</td><td>{escape(what or 'any')} "
                f"({target.unit})</td><td class='n'>{target.collected}</td>"
                f"<td class='n'>{target.target}</td><td class='n'>{_pct(target.fraction)}</td></tr>"
            )
    return (
        "<table><thead><tr><th>Site</th><th>Target</th><th>Collected</th><th>Goal</th>"
        f"<th>Done</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_dashboard(report: CampaignProgress) -> str:
    """The whole dashboard page for ``report``."""
    generated = report.generated_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    late = ", ".join(report.late_sites)
    tiles = "".join(
        [
            _tile("studies", "studies", str(report.studies)),
            _tile("instances", "instances", str(report.instances)),
            _tile("progress", "progress", _pct(report.progress)),
            _tile("expected_progress", "plan for today", _pct(report.expected_progress)),
            _tile(
                "rate_7d",
                "7-day rate",
                "–" if report.rate_7d is None else f"{report.rate_7d * 100:.2f}%/day",
            ),
            _tile(
                "projected",
                "projected completion",
                "done" if report.completed else str(report.projected_completion or "–"),
            ),
            _tile("rejection_rate", "QC rejected", f"{report.rejection_rate * 100:.1f}%"),
            _tile("label_coverage", "label coverage", _pct(report.label_coverage)),
            _tile("days_left", "days left", str(report.days_left)),
        ]
    )
    site_rows = "".join(_site_row(site) for site in report.sites)
    late_banner = (
        f'<p data-kpi="late_sites" style="color:{_STATUS_COLOURS["late"]};font-weight:600">'
        f"Late: {escape(late)}</p>"
        if late
        else '<p data-kpi="late_sites" class="muted">No site is late.</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(report.campaign)} — medai campaign dashboard</title>
<style>{_STYLE}</style></head>
<body>
<h1>{escape(report.campaign)} {_pill(report.status)}</h1>
<div class="sub">Day <span data-kpi="day">{report.day}</span> of {report.length_days}
({report.start_date} to {report.end_date}) · updated {generated} · refreshes every
{REFRESH_SECONDS} s</div>
<div class="tiles">{tiles}</div>
{late_banner}
<h2>Burn-up: plan vs actual</h2>
{_burnup_svg(report)}
<h2>Sites (late first)</h2>
<table><thead><tr><th>Site</th><th>Status</th><th>Progress (│ = plan)</th><th>Done</th>
<th>Studies</th><th>Instances</th><th>7-day rate</th><th>Projected</th><th>QC rejected</th>
<th>Labelled</th></tr></thead><tbody>{site_rows}</tbody></table>
<h2>Quarantine reasons</h2>
{_reasons_svg(report.quarantine_reasons)}
<h2>Targets</h2>
{_targets_table(report)}
<p class="muted">Status rule: {escape(report.status_rule)}</p>
</body></html>
"""


def render_login(message: str | None = None) -> str:
    """The page asking a steward for their API key (kept in an HttpOnly cookie)."""
    note = f'<p style="color:#c62828" role="alert">{escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medai dashboard — sign in</title>
<style>{_STYLE}</style></head>
<body><h1>medai campaign dashboard</h1>
<p>Paste your steward API key (from <code>medai keys create --role steward</code>).</p>
{note}
<form method="post" action="/dashboard/login">
<input type="password" name="key" id="key" autocomplete="off" size="60" required>
<button type="submit" id="sign-in">Sign in</button></form></body></html>
"""
