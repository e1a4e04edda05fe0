"""The rule that gives sites and the campaign their status, as text people read.

Kept in a module of its own, with no imports, so ``medai campaign status --help`` shows it
without loading the report's models; :mod:`medai.collection.campaign.report` exports it as
``STATUS_RULE`` and :mod:`medai.collection.campaign.kpis` applies it.
"""

from __future__ import annotations

__all__ = ["STATUS_RULE"]

STATUS_RULE = """\
complete: every target is met.
silent: the campaign is running and nothing was heard from the site (no instance received, \
no edge heartbeat) for MEDAI_SITE_QUIET_HOURS (default 24 hours; counted from the start for \
a site never heard from).
late: the 7-day rate projects completion after the last day, or nothing arrived in the \
last 7 days (no projection), or the campaign ended with targets unmet.
at risk: behind the plan for today, but the 7-day rate projects completion by the last day.
on track: on or ahead of the plan for today and projected to finish by the last day \
(before the campaign starts, every site with targets is on track).
no targets: the site has none.
A site without targets is "no targets"; any other gets the first of these that applies, \
in this order.
The campaign: complete, late or at risk by its own figures as above; otherwise at risk when \
any site is silent, late or at risk; otherwise on track. It is never silent.
Progress is the mean over targets of min(1, collected/target); the plan is linear over the \
campaign's days."""
"""The status rule, written once: shown by ``medai campaign status --help``, in the JSON
export (``status_rule``) and on the dashboard; :mod:`medai.collection.campaign.kpis`
applies it. One statement per line (the dashboard lists the lines)."""
