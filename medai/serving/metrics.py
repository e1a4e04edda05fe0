"""Prometheus metrics of the web service and ``GET /metrics`` (any valid API key).

Each app has its own :class:`prometheus_client.CollectorRegistry`
(:class:`ServiceMetrics`), so several apps in one process (the tests) never share
counts. Request metrics are labelled by the route's path template
(``/v1/predictions/{prediction_id}``), never by the path itself: paths can carry UIDs and
would make a label value per request. With ``--workers N`` each worker process counts
its own requests; scrape each worker or run one worker per port.

Each scrape also reads the campaign's site statuses from the catalog
(:func:`~medai.collection.campaign.progress.compute_progress`, from its counters) and
exposes them per site (:class:`SiteGauges`): ``medai_site_status`` (1 for the site's status,
0 for the others, one series per status), ``medai_site_last_seen_age_seconds`` (+Inf when
never heard from), ``medai_site_outbox_depth`` and ``medai_site_oldest_unsent_seconds``
(sites with an edge), ``medai_site_progress_ratio`` and ``medai_campaign_silent_sites``;
an alert on ``medai_site_status{status="silent"} == 1`` names the silent sites. Without a
campaign, or with the catalog out of reach, the site series are left out.

Security (:class:`SecurityGauges`, from the service's
:class:`~medai.ops.security.SecurityMonitor`): ``medai_security_events_total{kind}`` (every
event this process saw, also those folded into one audit record a minute),
``medai_auth_failures_total``, ``medai_auth_throttled_requests_total`` (429 answers),
``medai_auth_rate_limited_sources`` (sources throttled now) and
``medai_backup_age_seconds`` (+Inf when no backup was ever made).

``/metrics`` is not open (only ``/healthz`` and ``/readyz`` are): Prometheus sends a key
with ``authorization: {type: Bearer, credentials_file: ...}``. Give the scraper a
``monitoring`` key (``medai keys create --role monitoring``), which may read ``/metrics``
and nothing else; any person's key is taken too, an edge key is not.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medai.serving.deps import MetricsCallerDep

if TYPE_CHECKING:
    from medai.collection.campaign.report import CampaignProgress
    from medai.ops.security import SecurityMonitor
    from medai.serving.context import Service

__all__ = ["MetricsMiddleware", "SecurityGauges", "ServiceMetrics", "SiteGauges", "router"]

_log = logging.getLogger(__name__)

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)
_UNMATCHED = "<unmatched>"


class SiteGauges(Collector):
    """Per-site gauges from the latest campaign report given to :meth:`update`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._report: CampaignProgress | None = None

    def update(self, report: CampaignProgress | None) -> None:
        """Expose ``report``'s sites (None: none); ages count up to its ``generated_at``."""
        with self._lock:
            self._report = report

    def describe(self) -> list[Metric]:
        """Nothing to check at registration (the series come and go with the sites)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The gauges of the latest report's sites."""
        from medai.collection.campaign.report import STATUS_ORDER

        with self._lock:
            report = self._report
        if report is None:
            return
        at = report.generated_at
        status = GaugeMetricFamily(
            "medai_site_status",
            "1 for the site's campaign status, 0 for the other statuses (see the status rule "
            "of `medai campaign status --help`).",
            labels=["site", "status"],
        )
        age = GaugeMetricFamily(
            "medai_site_last_seen_age_seconds",
            "Seconds since anything was heard from the site (its last instance or its edge's "
            "heartbeat); +Inf when never.",
            labels=["site"],
        )
        depth = GaugeMetricFamily(
            "medai_site_outbox_depth",
            "Instances waiting in the site's edge outbox, from its latest heartbeat.",
            labels=["site"],
        )
        oldest = GaugeMetricFamily(
            "medai_site_oldest_unsent_seconds",
            "Age of the oldest instance waiting in the site's edge outbox (latest heartbeat).",
            labels=["site"],
        )
        progress = GaugeMetricFamily(
            "medai_site_progress_ratio",
            "The site's progress: mean over its targets of min(1, collected/target).",
            labels=["site"],
        )
        for site in report.sites:
            for name in STATUS_ORDER:
                status.add_metric([site.site, name], 1.0 if site.status == name else 0.0)
            seen = site.last_seen
            age.add_metric(
                [site.site], math.inf if seen is None else max(0.0, (at - seen).total_seconds())
            )
            if site.edge is not None:
                depth.add_metric([site.site], float(site.edge.outbox_depth))
                if site.edge.oldest_unsent_seconds is not None:
                    oldest.add_metric([site.site], site.edge.oldest_unsent_seconds)
            if site.progress is not None:
                progress.add_metric([site.site], site.progress)
        silent = GaugeMetricFamily(
            "medai_campaign_silent_sites",
            "Sites of the campaign whose status is silent.",
            value=float(len(report.silent_sites)),
        )
        yield from (status, age, depth, oldest, progress, silent)


class SecurityGauges(Collector):
    """The security series, read at each scrape from the service's
    :class:`~medai.ops.security.SecurityMonitor` and the last backup given to :meth:`update`."""

    def __init__(self, monitor: SecurityMonitor) -> None:
        self._monitor = monitor
        self._lock = threading.Lock()
        self._backup_age: float | None = None

    def update(self, backup_age: float | None) -> None:
        """Seconds since the last backup (+Inf: none); None leaves the series out."""
        with self._lock:
            self._backup_age = backup_age

    def describe(self) -> list[Metric]:
        """Nothing to check at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Security events by kind, failed authentications, throttled sources, backup age."""
        monitor = self._monitor
        events = CounterMetricFamily(
            "medai_security_events",
            "Security events seen by this process, by kind (each counted, also those folded "
            "into one audit record a minute).",
            labels=["kind"],
        )
        for kind, count in monitor.event_counts().items():
            if kind in _PROCESS_KINDS:
                events.add_metric([kind], float(count))
        failures = CounterMetricFamily(
            "medai_auth_failures",
            "Failed authentications: malformed, unknown or revoked API keys.",
            value=float(monitor.auth_failures),
        )
        throttled = CounterMetricFamily(
            "medai_auth_throttled_requests",
            "Requests answered 429 because their source made too many failed "
            "authentications (MEDAI_AUTH_FAILURES_PER_MINUTE).",
            value=float(monitor.throttled_requests),
        )
        sources = GaugeMetricFamily(
            "medai_auth_rate_limited_sources",
            "Source addresses throttled now for failed authentications.",
            value=float(monitor.limiter.throttled_sources()),
        )
        yield from (events, failures, throttled, sources)
        with self._lock:
            age = self._backup_age
        if age is not None:
            yield GaugeMetricFamily(
                "medai_backup_age_seconds",
                "Seconds since the last backup (`medai backup create`); +Inf when none.",
                value=age,
            )


# The kinds of security event the web service itself sees (the others happen in other
# processes: `collect listen`, `medai models promote`; `medai security status` has them all).
_PROCESS_KINDS = frozenset({"auth-failed", "revoked-key-used", "rate-limited", "key-mismatch"})


class ServiceMetrics:
    """The metrics of one app, in their own registry."""

    def __init__(self, monitor: SecurityMonitor | None = None) -> None:
        from medai.ops.security import SecurityMonitor

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "medai_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "medai_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            ["route", "method"],
            registry=r,
        )
        self.batch_size = Histogram(
            "medai_inference_batch_size",
            "Images per forward pass of the micro-batcher.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "medai_inference_queue_seconds",
            "Longest wait of an image of a batch for its forward pass.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "medai_inference_forward_seconds",
            "Duration of a forward pass (one batch).",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        # Where a prediction's time goes, stage by stage (issue 16): decode (parse and pixel
        # decoding), preprocess (resize, intensity), queue, forward, postprocess (findings
        # and the answer), audit, gradcam (only when a heatmap or report is asked for).
        self.stage_seconds = Histogram(
            "medai_inference_stage_seconds",
            "Time one prediction spent in a stage (decode and preprocess: over its instances).",
            ["stage"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "medai_predictions",
            "Studies predicted, by model and version.",
            ["model", "version"],
            registry=r,
        )
        self.model_info = Gauge(
            "medai_model_info",
            "The model version served (1) by name, version and alias.",
            ["model", "version", "alias"],
            registry=r,
        )
        self.model_switches = Counter(
            "medai_model_switches",
            "Times a new model version was swapped in (the first load included).",
            registry=r,
        )
        self.model_load_failures = Counter(
            "medai_model_load_failures",
            "Failed attempts to load the served model or a new version of it.",
            registry=r,
        )
        self.sites = SiteGauges()
        r.register(self.sites)
        self.security = SecurityGauges(monitor or SecurityMonitor(0))
        r.register(self.security)

    def observe_batch(self, size: int, queue_s: float, inference_s: float) -> None:
        """Record one forward pass of the micro-batcher."""
        self.batch_size.observe(size)
        self.queue_seconds.observe(queue_s)
        self.inference_seconds.observe(inference_s)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record ``seconds`` spent in ``stage`` (see ``stage_seconds``)."""
        self.stage_seconds.labels(stage).observe(seconds)

    def serving(self, name: str, version: str, alias: str, previous: str | None) -> None:
        """Record that ``version`` replaced ``previous`` (None: the first load)."""
        if previous is not None:
            try:
                self.model_info.remove(name, previous, alias)
            except KeyError:
                pass
        self.model_info.labels(name, version, alias).set(1)
        self.model_switches.inc()


def _route_template(scope: Scope) -> str:
    # The router records the matched route in the scope; unmatched paths (404, or refused
    # before routing, such as a declared body over the limit) share one label.
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else _UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them, by route template.

    Parameters
    ----------
    app
        The wrapped application.
    metrics
        Where to record.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


router = APIRouter(tags=["ops"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (any valid API key)",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
def metrics(request: Request, caller: MetricsCallerDep) -> Response:
    """Request counts and latencies by route, batch sizes, forward-pass times, model version,
    each site's status, last seen and edge outbox, security events and the last backup."""
    registry: ServiceMetrics = request.app.state.metrics
    service = request.app.state.service
    registry.sites.update(_site_report(service))
    registry.security.update(_backup_age(service))
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)


def _backup_age(service: Service) -> float | None:
    """Seconds since the last backup (+Inf: none), or None with the catalog out of reach."""
    from sqlalchemy.exc import SQLAlchemyError

    from medai.catalog.db import session_factory
    from medai.ops.security import backup_age_seconds

    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    try:
        with reader() as session:
            return backup_age_seconds(session)
    except SQLAlchemyError as exc:
        _log.debug("no backup age: %s", type(exc).__name__)
        return None


def _site_report(service: Service) -> CampaignProgress | None:
    """The campaign's progress now, or None without a campaign or a reachable catalog."""
    from sqlalchemy.exc import SQLAlchemyError

    from medai.catalog.db import session_factory
    from medai.collection.campaign.progress import compute_progress
    from medai.errors import MedaiError

    reader = session_factory(service.engine.execution_options(sqlite_begin="DEFERRED"))
    try:
        with reader() as session:
            return compute_progress(session, quiet_hours=service.settings.site_quiet_hours)
    except (MedaiError, SQLAlchemyError) as exc:
        # /metrics still answers the request metrics; the site series are left out.
        _log.debug("no site metrics: %s", type(exc).__name__)
        return None
