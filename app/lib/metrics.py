"""Prometheus metrics at ``/metrics``, through Litestar's own integration.

Request counts, latencies and errors come from Litestar's Prometheus middleware, labelled by route template,
method and status; the domain's counters are defined beside the code they count. With several granian
workers each worker writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` (prepared by ``python -m app.serve``)
and ``/metrics`` adds them up, whichever worker answers the scrape.
"""

from __future__ import annotations

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

PREFIX = "orders"


def metric(name: str) -> str:
    return f"{PREFIX}_{name}"


class MetricsController(PrometheusController):
    """Unauthenticated and not rate limited, like the health probes: serve it on an internal network only."""

    path = "/metrics"
    include_in_schema = False
    opt = {"exclude_from_auth": True}


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(app_name="orders", prefix=PREFIX, group_path=True, exclude=[r"^/metrics"])
