"""Prometheus metrics, through Litestar's own integration.

Request counts, latencies and errors come from Litestar's Prometheus middleware, labelled by route template,
method and status; the domain's counters are defined beside the code they count. They are not served by the
app, on its public port: ``python -m app.serve`` serves them on ``METRICS_PORT``, adding up the samples that
each granian worker writes to ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from litestar.enums import ScopeType
from litestar.plugins.prometheus import PrometheusConfig
from litestar.plugins.prometheus import PrometheusMiddleware as LitestarPrometheusMiddleware
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send
    from prometheus_client.metrics import Counter, Gauge, Histogram

PREFIX = "orders"


def metric(name: str) -> str:
    return f"{PREFIX}_{name}"


class _Outcome(NamedTuple):
    """The series a request of one route, method and status adds to."""

    requests: Counter
    duration: Histogram
    errors: Counter | None


class _Route:
    """The series of one route template and method."""

    def __init__(self, middleware: PrometheusMiddleware, labels: dict[str, str | int | float]) -> None:
        self.middleware = middleware
        self.labels = labels
        self.in_progress: Gauge = middleware.requests_in_progress(labels).labels(*labels.values())
        self.outcomes: dict[int, _Outcome] = {}

    def outcome(self, status: int) -> _Outcome:
        if (outcome := self.outcomes.get(status)) is None:
            labels = {**self.labels, "status_code": status}
            values, metrics = [*labels.values()], self.middleware
            errors = (
                metrics.requests_error_count(labels) if status >= HTTP_500_INTERNAL_SERVER_ERROR else None
            )
            outcome = self.outcomes[status] = _Outcome(
                metrics.request_count(labels).labels(*values),
                metrics.request_time(labels).labels(*values),
                errors.labels(*values) if errors is not None else None,
            )
        return outcome


class PrometheusMiddleware(LitestarPrometheusMiddleware):
    """Litestar's request metrics (same names, labels and values), with each route's labelled series looked
    up once rather than on every request.

    Litestar's builds a Request and a dict of labels for each request and looks up four series by their label
    values (formatting them, under a lock), a measurable share of a cached read (bench/RESULTS.md,
    Hand-written parts). Options this one does not implement (extra labels, exemplars, excluded methods,
    ungrouped paths) leave the work to Litestar's.
    """

    def __init__(self, app: ASGIApp, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self.app_name = config.app_name  # our own copy: Litestar keeps the config in a private attribute
        self.lean = config.group_path and not (
            config.labels or config.exemplars or config.excluded_http_methods
        )
        self.routes: dict[tuple[str, str], _Route] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.lean:
            await super().__call__(scope, receive, send)
            return
        route = self.route(scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"], scope)
        started = time.perf_counter()
        status, duration = 200, 0.0

        async def measuring_send(message: Message) -> None:
            nonlocal status, duration
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                duration = time.perf_counter() - started
            await send(message)

        route.in_progress.inc()
        try:
            await self.app(scope, receive, measuring_send)
        finally:
            route.in_progress.dec()
            outcome = route.outcome(status)
            if outcome.errors is not None:
                outcome.errors.inc()
            outcome.requests.inc()
            outcome.duration.observe(duration)

    def route(self, method: str, scope: Scope) -> _Route:
        path: str = scope["path_template"]
        if (route := self.routes.get((method, path))) is None:
            labels: dict[str, Any] = {
                "method": method,
                "path": path,
                "status_code": 200,
                "app_name": self.app_name,
            }
            route = self.routes[(method, path)] = _Route(self, labels)
        return route


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name="orders",
        prefix=PREFIX,
        group_path=True,
        middleware_class=PrometheusMiddleware,
    )
