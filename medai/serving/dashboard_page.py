"""The campaign dashboard as one self-contained HTML page (inline CSS and SVG, no scripts
from elsewhere: the hospital network may have no internet access).

Rendered on the server from :class:`~medai.collection.campaign.report.CampaignProgress`, so the
page shows exactly the numbers of ``medai campaign status`` and of the export. Elements
carry ``data-*`` attributes naming what they show (``data-status`` holds the machine status,
whatever the page's language), for the browser tests and for anyone scraping the page.

Every word of the page goes through the message catalogue of :mod:`medai.serving.i18n`
(English or Vietnamese), and every number, percentage, date and duration is formatted in
the page's locale. A site's status is named by its ``status`` and explained by its
``status_code`` with ``status_args`` (the figures of the reason, formatted here); a code
the catalogue does not know shows the report's English ``status_reason``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from html import escape
from typing import Any, Final

from babel.core import Locale

from medai.collection.campaign.report import CampaignProgress, SiteProgress
from medai.ops.security import SecuritySummary
from medai.serving.i18n import LANGUAGES, N_, Translator
from medai.serving.monitoring_panel import render_monitoring_panel
from medai.serving.security_panel import render_security_panel

__all__ = [
    "REFRESH_SECONDS",
    "STATUS_NAMES",
    "STATUS_REASONS",
    "render_dashboard",
    "render_login",
    "status_rule_lines",
]

REFRESH_SECONDS = 30
_STATUS_COLOURS = {
    "silent": "#37474f",
    "late": "#c62828",
    "at risk": "#ef6c00",
    "on track": "#2e7d32",
    "complete": "#1565c0",
    "no targets": "#757575",
}

STATUS_NAMES: Final[Mapping[str, str]] = {
    "silent": N_("silent"),
    "late": N_("late"),
    "at risk": N_("at risk"),
    "on track": N_("on track"),
    "complete": N_("complete"),
    "no targets": N_("no targets"),
}
"""The statuses of the report, as the page names them (msgids of the catalogue)."""

STATUS_REASONS: Final[Mapping[str, tuple[str, ...]]] = {
    "complete": (N_("Every target met."),),
    "silent": (
        N_(
            "Nothing heard for %(hours)s h (no instance, no edge heartbeat; silent after "
            "%(quiet_hours)s h); last seen %(last_seen)s."
        ),
        N_(
            "Nothing heard for %(hours)s h (no instance, no edge heartbeat; silent after "
            "%(quiet_hours)s h); never heard from since the start."
        ),
    ),
    "late-projected": (
        N_(
            "%(progress)s against a plan of %(expected)s; projected %(projected)s, "
            "after the end %(end)s."
        ),
        N_(
            "%(progress)s against a plan of %(expected)s; at the 7-day rate the targets "
            "would take more than 100 years."
        ),
    ),
    "late-stalled": (
        N_(
            "%(progress)s against a plan of %(expected)s; nothing toward the targets arrived "
            "in the last %(days)s days, so there is no projection."
        ),
    ),
    "late-ended": (N_("The campaign ended on %(end)s with %(progress)s of the targets met."),),
    "at-risk-behind": (
        N_(
            "%(progress)s against a plan of %(expected)s, projected %(projected)s, "
            "before the end %(end)s."
        ),
    ),
    "at-risk-sites": (N_("On track by its own figures, but not every site is: %(sites)s."),),
    "on-track": (
        N_(
            "%(progress)s against a plan of %(expected)s; projected %(projected)s, "
            "by the end %(end)s."
        ),
    ),
    "not-started": (N_("The campaign starts on %(start)s."),),
    "no-targets": (N_("No targets."),),
}
"""Per status code, its line with the figures of ``status_args`` (msgids of the catalogue):
the first whose figures are all there (not null) is shown."""

# How each figure of status_args is shown; the others as numbers or text.
_PERCENT_ARGS = frozenset({"progress", "expected"})
_DATE_ARGS = frozenset({"projected", "end", "start"})
_TIME_ARGS = frozenset({"last_seen"})
_HOUR_ARGS = frozenset({"hours"})

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #212121; background: #fafafa; }
h1 { margin: 0 0 .25rem; font-size: 1.5rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.sub { color: #616161; margin-bottom: 1rem; }
.lang { float: right; font-size: .9rem; } .lang a { margin-left: .5rem; }
.lang a[aria-current] { font-weight: 600; color: #212121; text-decoration: none; }
.tiles { display: flex; flex-wrap: wrap; gap: .75rem; }
.tile { background: #fff; border: 1px solid #e0e0e0; border-radius: 6px; padding: .6rem .9rem;
        min-width: 8rem; }
.tile .v { font-size: 1.4rem; font-weight: 600; } .tile .k { color: #616161; font-size: .8rem; }
.pill { color: #fff; border-radius: 999px; padding: .1rem .6rem; font-size: .8rem;
        white-space: nowrap; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { border-bottom: 1px solid #eee; padding: .4rem .5rem; text-align: left; font-size: .9rem; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td .why { color: #616161; font-size: .8rem; display: block; max-width: 22rem; }
.bar { position: relative; background: #eceff1; height: .9rem; border-radius: 3px; width: 12rem; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 3px; }
.bar .plan { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #212121; }
svg text { font-size: 11px; fill: #424242; }
.muted { color: #9e9e9e; }
ul.rule { color: #616161; font-size: .85rem; }
"""


def _field(obj: object, name: str) -> Any:
    """``obj.name`` or ``obj[name]`` (the report's parts are models; an edge may be a dict)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _h(t: Translator, msgid: str, **html: str) -> str:
    """A message as HTML: its text escaped, then its placeholders filled with ``html``."""
    text = escape(t._(msgid), quote=False)
    try:
        return text % html
    except (KeyError, ValueError, TypeError):
        return escape(msgid, quote=False) % html


def _status_name(t: Translator, status: str) -> str:
    msgid = STATUS_NAMES.get(status)
    return t._(msgid) if msgid else status


def _pill(t: Translator, status: str) -> str:
    colour = _STATUS_COLOURS.get(status, "#757575")
    return (
        f'<span class="pill" style="background:{colour}" data-status="{escape(status)}">'
        f"{escape(_status_name(t, status))}</span>"
    )


def _tile(key: str, label: str, value: str) -> str:
    return (
        f'<div class="tile"><div class="v" data-kpi="{key}">{escape(value)}</div>'
        f'<div class="k">{escape(label)}</div></div>'
    )


def _rate(t: Translator, rate: float | None) -> str:
    return "–" if rate is None else t._("%(rate)s/day", rate=t.percent(rate, 2))


def _projected(t: Translator, part: SiteProgress | CampaignProgress) -> str:
    return t._("done") if part.completed else t.date(part.projected_completion)


def _format_arg(t: Translator, name: str, value: object) -> str:
    """One figure of ``status_args`` in the page's locale (dates and times come as ISO text)."""
    try:
        if name in _DATE_ARGS and isinstance(value, str | dt.date):
            day = value if isinstance(value, dt.date) else dt.date.fromisoformat(value)
            return t.date(day)
        if name in _TIME_ARGS and isinstance(value, str | dt.datetime):
            moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
            return t.datetime(moment)
    except ValueError:
        return str(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if name in _PERCENT_ARGS:
            return t.percent(float(value))
        if name in _HOUR_ARGS or float(value).is_integer():
            return t.number(round(value))
        return t.number(value, 1)
    return str(value)


def _reason(t: Translator, part: SiteProgress | CampaignProgress) -> tuple[str, bool]:
    """The line saying why ``part`` has its status, and whether it is in the page's language.

    Translated by ``status_code`` with ``status_args``; else the report's English
    ``status_reason`` (in the page's language only on an English page).
    """
    english = str(_field(part, "status_reason") or "")
    msgids = STATUS_REASONS.get(_field(part, "status_code") or "", ())
    args = _field(part, "status_args") or {}
    if not isinstance(args, Mapping):
        return english, t.language == "en"
    # A figure that is null (never seen, no projection) picks the line without it.
    shown = {str(k): _format_arg(t, str(k), v) for k, v in args.items() if v is not None}
    for msgid in msgids:
        try:
            msgid % shown  # noqa: B018 (every figure the line names is there)
        except (KeyError, ValueError, TypeError):
            continue
        return t._(msgid, **shown), t.has(msgid)
    return english, t.language == "en"


def _burnup_svg(
    t: Translator, report: CampaignProgress, width: int = 720, height: int = 240
) -> str:
    """Plan (dashed) and actual (solid) progress over every day of the campaign."""
    left, right, top, bottom = 40, 10, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    days = len(report.burnup)

    def x(index: int) -> float:
        return left + (plot_w * index / max(1, days - 1))

    def y(value: float) -> float:
        return top + plot_h * (1 - value)

    label = escape(t._("Burn-up: plan and actual progress"))
    parts = [
        f'<svg role="img" aria-label="{label}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-chart="burnup">'
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#e0e0e0"/><text x="4" y="{y(tick) + 4:.1f}">{escape(t.percent(tick))}</text>'
        )
    for index in range(0, days, 15):
        day = report.burnup[index].day
        parts.append(
            f'<text x="{x(index) - 14:.1f}" y="{height - 8}">{escape(t.short_day(day))}</text>'
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
    legend = escape(t._("— actual   - - plan"))
    parts.append(f'<text x="{left + 8}" y="{top + 14}">{legend}</text></svg>')
    return "".join(parts)


def _reasons_svg(t: Translator, reasons: dict[str, int], width: int = 420) -> str:
    """Quarantined inputs by reason, as horizontal bars (the reason codes stay codes)."""
    if not reasons:
        nothing = escape(t._("Nothing quarantined."))
        return f'<p class="muted" data-chart="quarantine">{nothing}</p>'
    row_h, label_w = 22, 170
    top = max(reasons.values())
    height = row_h * len(reasons) + 4
    label = escape(t._("Quarantined inputs by reason"))
    parts = [
        f'<svg role="img" aria-label="{label}" width="{width}" '
        f'height="{height}" data-chart="quarantine">'
    ]
    for index, (reason, count) in enumerate(sorted(reasons.items(), key=lambda kv: -kv[1])):
        bar = (width - label_w - 50) * count / top
        y = index * row_h + 2
        parts.append(
            f'<text x="0" y="{y + 14}">{escape(reason)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{bar:.1f}" height="{row_h - 8}" '
            f'fill="#ef6c00"/><text x="{label_w + bar + 6:.1f}" y="{y + 14}" '
            f'data-reason="{escape(reason)}">{escape(t.number(count))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _progress_bar(t: Translator, site: SiteProgress) -> str:
    if site.progress is None:
        return f'<span class="muted">{escape(_status_name(t, "no targets"))}</span>'
    colour = _STATUS_COLOURS.get(site.status, "#757575")
    done = min(100.0, site.progress * 100)
    plan = min(100.0, site.expected_progress * 100)
    title = t._(
        "%(done)s done, plan %(plan)s",
        done=t.percent(min(1.0, site.progress)),
        plan=t.percent(min(1.0, site.expected_progress)),
    )
    return (
        f'<div class="bar" title="{escape(title)}">'
        f'<div class="fill" style="width:{done:.1f}%;background:{colour}"></div>'
        f'<div class="plan" style="left:{plan:.1f}%"></div></div>'
    )


def _last_seen(t: Translator, site: SiteProgress, now: dt.datetime) -> str:
    seen = _field(site, "last_seen")
    if not isinstance(seen, dt.datetime):
        never = escape(t._("never"))
        return f'<td data-kpi="last_seen" class="muted">{never}</td>'
    stamp = seen if seen.tzinfo else seen.replace(tzinfo=dt.UTC)
    return (
        f'<td data-kpi="last_seen" data-value="{escape(stamp.isoformat())}" '
        f'title="{escape(t.datetime(stamp))}">{escape(t.ago(stamp, now))}</td>'
    )


def _outbox(t: Translator, site: SiteProgress) -> str:
    edge = _field(site, "edge")
    if edge is None:
        no_edge = escape(t._("no edge"))
        return f'<td class="n muted" data-kpi="outbox">{no_edge}</td>'
    depth = _field(edge, "outbox_depth")
    oldest = _field(edge, "oldest_unsent_seconds")
    shown = "–" if depth is None else t.number(int(depth))
    cell = f'<span data-kpi="outbox_depth">{escape(shown)}</span>'
    if depth and oldest is not None:
        age = t._("oldest unsent: %(age)s", age=t.duration(float(oldest)))
        cell += f'<br><span class="muted" data-kpi="oldest_unsent">{escape(age)}</span>'
    return f'<td class="n" data-kpi="outbox">{cell}</td>'


def _site_row(t: Translator, site: SiteProgress, now: dt.datetime) -> str:
    reason, _ = _reason(t, site)
    why = f'<span class="why" data-kpi="reason">{escape(reason)}</span>' if reason else ""
    cells = [
        f"<td><strong>{escape(site.site)}</strong><br><span class='muted'>"
        f"{escape(site.name)}</span></td>",
        f"<td>{_pill(t, site.status)}{why}</td>",
        _last_seen(t, site, now),
        _outbox(t, site),
        f"<td>{_progress_bar(t, site)}</td>",
        f'<td class="n" data-kpi="progress">{escape(t.percent(site.progress))}</td>',
        f'<td class="n" data-kpi="studies">{escape(t.number(site.studies))}</td>',
        f'<td class="n" data-kpi="instances">{escape(t.number(site.instances))}</td>',
        f'<td class="n" data-kpi="rate_7d">{escape(_rate(t, site.rate_7d))}</td>',
        f'<td class="n" data-kpi="projected">{escape(_projected(t, site))}</td>',
        f'<td class="n" data-kpi="quarantined">{escape(t.number(site.quarantined))} '
        f"({escape(t.percent(site.rejection_rate, 1))})</td>",
        f'<td class="n" data-kpi="labelled">{escape(t.number(site.labelled_studies))} '
        f"({escape(t.percent(site.label_coverage))})</td>",
    ]
    return f'<tr data-site="{escape(site.site)}">{"".join(cells)}</tr>'


def _targets_table(t: Translator, report: CampaignProgress) -> str:
    units = {"studies": t._("studies"), "instances": t._("instances")}
    anything = t._("any")
    rows = []
    for site in report.sites:
        for target in site.targets:
            what = " ".join(v for v in (target.modality, target.body_part, target.finding) if v)
            rows.append(
                f"<tr><td>{escape(site.site)}</td><td>{escape(what or anything)} "
                f"({escape(units.get(target.unit, target.unit))})</td>"
                f"<td class='n'>{escape(t.number(target.collected))}</td>"
                f"<td class='n'>{escape(t.number(target.target))}</td>"
                f"<td class='n'>{escape(t.percent(target.fraction))}</td></tr>"
            )
    heads = (t._("Site"), t._("Target"), t._("Collected"), t._("Goal"), t._("Done"))
    head = "".join(f"<th>{escape(h[:1].upper() + h[1:])}</th>" for h in heads)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _banners(t: Translator, report: CampaignProgress) -> str:
    by_id = {site.site: site for site in report.sites}
    silent_ids = list(_field(report, "silent_sites") or [])
    parts = []
    if silent_ids:
        named = []
        for site_id in silent_ids:
            seen = _field(by_id.get(site_id), "last_seen")
            when = (
                t.ago(seen if seen.tzinfo else seen.replace(tzinfo=dt.UTC), report.generated_at)
                if isinstance(seen, dt.datetime)
                else t._("never")
            )
            named.append(t._("%(site)s (last seen %(when)s)", site=site_id, when=when))
        silent = escape(t._("Silent: %(sites)s", sites=", ".join(named)))
        parts.append(
            f'<p data-kpi="silent_sites" style="color:{_STATUS_COLOURS["silent"]};'
            f'font-weight:600">{silent}</p>'
        )
    if report.late_sites:
        late = escape(t._("Late: %(sites)s", sites=", ".join(report.late_sites)))
        parts.append(
            f'<p data-kpi="late_sites" style="color:{_STATUS_COLOURS["late"]};font-weight:600">'
            f"{late}</p>"
        )
    else:
        none_late = escape(t._("No site is late."))
        parts.append(f'<p data-kpi="late_sites" class="muted">{none_late}</p>')
    return "\n".join(parts)


def status_rule_lines(rule: str) -> list[str]:
    """The statements of the report's status rule, one per line (each a catalogue msgid)."""
    return [line.strip() for line in rule.splitlines() if line.strip()]


def _status_rule(t: Translator, rule: str) -> str:
    """The report's status rule as a list, each line translated when the catalogue has it."""
    items = "".join(f"<li>{escape(t._(line))}</li>" for line in status_rule_lines(rule))
    title = escape(t._("Status rule"))
    return (
        f'<h2 data-heading="status_rule">{title}</h2>'
        f'<ul class="rule" data-kpi="status_rule">{items}</ul>'
    )


def _language_links(t: Translator) -> str:
    links = []
    for code in LANGUAGES:
        name = Locale.parse(code).display_name or code
        current = ' aria-current="true"' if code == t.language else ""
        links.append(
            f'<a href="?lang={code}" hreflang="{code}" lang="{code}" data-lang="{code}"'
            f"{current}>{escape(name)}</a>"
        )
    label = escape(t._("Language"))
    return f'<nav class="lang" aria-label="{label}">{"".join(links)}</nav>'


def render_dashboard(
    report: CampaignProgress,
    t: Translator | None = None,
    security: Mapping[str, SecuritySummary] | None = None,
    monitoring: Mapping[str, Any] | None = None,
) -> str:
    """The whole dashboard page for ``report``, in the language of ``t`` (English if None),
    with the security panel of ``security`` (the summaries "24h" and "7d") when given, and
    the served model's monitoring panel of ``monitoring`` (its report) when given."""
    t = t or Translator("en")
    now = (
        report.generated_at
        if report.generated_at.tzinfo
        else report.generated_at.replace(tzinfo=dt.UTC)
    )
    tiles = "".join(
        [
            _tile("studies", t._("studies"), t.number(report.studies)),
            _tile("instances", t._("instances"), t.number(report.instances)),
            _tile("progress", t._("progress"), t.percent(report.progress)),
            _tile("expected_progress", t._("plan for today"), t.percent(report.expected_progress)),
            _tile("rate_7d", t._("7-day rate"), _rate(t, report.rate_7d)),
            _tile("projected", t._("projected completion"), _projected(t, report)),
            _tile("rejection_rate", t._("QC rejected"), t.percent(report.rejection_rate, 1)),
            _tile("label_coverage", t._("label coverage"), t.percent(report.label_coverage)),
            _tile("days_left", t._("days left"), t.number(report.days_left)),
            _tile(
                "silent_count",
                t._("silent sites"),
                t.number(len(_field(report, "silent_sites") or [])),
            ),
        ]
    )
    site_rows = "".join(_site_row(t, site, now) for site in report.sites)
    figures = {
        "day": f'<span data-kpi="day">{report.day}</span>',
        "length": escape(t.number(report.length_days)),
        "start": f'<span data-kpi="start_date">{escape(t.date(report.start_date))}</span>',
        "end": f'<span data-kpi="end_date">{escape(t.date(report.end_date))}</span>',
        "updated": f'<span data-kpi="generated_at">{escape(t.datetime(now))}</span>',
        "seconds": str(REFRESH_SECONDS),
    }
    sub = _h(
        t,
        "Day %(day)s of %(length)s (%(start)s to %(end)s) · updated %(updated)s · "
        "refreshes every %(seconds)s s",
        **figures,
    )
    heads = (
        t._("Site"),
        t._("Status"),
        t._("Last seen"),
        t._("Outbox"),
        t._("Progress (│ = plan)"),
        t._("Done"),
        t._("Studies"),
        t._("Instances"),
        t._("7-day rate"),
        t._("Projected"),
        t._("QC rejected"),
        t._("Labelled"),
    )
    head = "".join(f"<th>{escape(h[:1].upper() + h[1:])}</th>" for h in heads)
    campaign_reason, in_language = _reason(t, report)
    campaign_why = (
        f'<div class="sub" data-kpi="campaign_reason">{escape(campaign_reason)}</div>'
        if campaign_reason and in_language
        else ""
    )
    title = escape(t._("%(campaign)s — medai campaign dashboard", campaign=report.campaign))
    headings = {
        "burnup": escape(t._("Burn-up: plan vs actual")),
        "sites": escape(t._("Sites (silent and late first)")),
        "quarantine": escape(t._("Quarantine reasons")),
        "act": escape(t._("Act on the quarantine: list, view, release, purge")),
        "targets": escape(t._("Targets")),
    }
    return f"""<!doctype html>
<html lang="{t.language}"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_STYLE}</style></head>
<body>
{_language_links(t)}
<h1>{escape(report.campaign)} {_pill(t, report.status)}</h1>
{campaign_why}
<div class="sub">{sub}</div>
<div class="tiles">{tiles}</div>
{_banners(t, report)}
<h2 data-heading="burnup">{headings["burnup"]}</h2>
{_burnup_svg(t, report)}
<h2 data-heading="sites">{headings["sites"]}</h2>
<table><thead><tr>{head}</tr></thead><tbody>{site_rows}</tbody></table>
<h2 data-heading="quarantine">{headings["quarantine"]}</h2>
{_reasons_svg(t, report.quarantine_reasons)}
<p><a href="/dashboard/quarantine" data-link="quarantine">{headings["act"]}</a></p>
<h2 data-heading="targets">{headings["targets"]}</h2>
{_targets_table(t, report)}
{render_security_panel(t, security) if security else ""}
{render_monitoring_panel(t, monitoring) if monitoring else ""}
{_status_rule(t, report.status_rule)}
</body></html>
"""


def render_login(t: Translator | None = None, message: str | None = None) -> str:
    """The page asking a steward for their API key (kept in an HttpOnly cookie).

    ``message`` is already in the page's language (see :mod:`medai.serving.dashboard`).
    """
    t = t or Translator("en")
    note = f'<p style="color:#c62828" role="alert">{escape(message)}</p>' if message else ""
    intro = _h(
        t,
        "Paste your steward API key (from %(command)s).",
        command="<code>medai keys create --role steward</code>",
    )
    words = {
        "title": escape(t._("medai dashboard — sign in")),
        "heading": escape(t._("medai campaign dashboard")),
        "label": escape(t._("Steward API key")),
        "button": escape(t._("Sign in")),
    }
    return f"""<!doctype html>
<html lang="{t.language}"><head><meta charset="utf-8">
<title>{words["title"]}</title>
<style>{_STYLE}</style></head>
<body>{_language_links(t)}
<h1>{words["heading"]}</h1>
<p>{intro}</p>
{note}
<form method="post" action="/dashboard/login">
<label for="key">{words["label"]}</label><br>
<input type="password" name="key" id="key" autocomplete="off" size="60" required>
<button type="submit" id="sign-in">{words["button"]}</button></form></body></html>
"""
