"""Prometheus metrics of the web service and ``GET /metrics`` (any valid API key).

Each app has its own :class:`prometheus_client.CollectorRegistry`
(:class:`ServiceMetrics`), so several apps in one process (the tests) never share
counts. Request metrics are labelled by the route's path template
(``/v1/predictions/{prediction_id}``), never by the path itself: paths can carry UIDs and
would make a label value per request. With ``--workers N`` each worker process counts
its own requests; scrape each worker or run one worker per port.

``/metrics`` is not open (only ``/healthz`` and ``/readyz`` are): Prometheus sends a key
with ``authorization: {type: Bearer, credentials_file: ...}``. Any valid key is taken,
so the operator can give the scraper the key of whichever role is least useful to
someone who steals it at their site.
"""

from __future__ import annotations

import time

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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medai.serving.deps import CallerDep

__all__ = ["MetricsMiddleware", "ServiceMetrics", "router"]

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)
_UNMATCHED = "<unmatched>"


class ServiceMetrics:
    """The metrics of one app, in their own registry."""

    def __init__(self) -> None:
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

    def observe_batch(self, size: int, queue_s: float, inference_s: float) -> None:
        """Record one forward pass of the micro-batcher."""
        self.batch_size.observe(size)
        self.queue_seconds.observe(queue_s)
        self.inference_seconds.observe(inference_s)

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
def metrics(request: Request, caller: CallerDep) -> Response:
    """Request counts and latencies by route, batch sizes, forward-pass times, model version."""
    registry: ServiceMetrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
