"""What app/observability/metrics.py's per-route series cache relies on: should either change, these fail.

- Litestar's ``PrometheusMiddleware``: the cache must record the same series (names, labels, values) as
  Litestar's own middleware does for the same requests;
- prometheus-client: a labelled series looked up once and kept keeps counting, in multiprocess mode too
  (granian's workers each write their samples to ``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from litestar.plugins.prometheus import PrometheusConfig
from litestar.plugins.prometheus import PrometheusMiddleware as LitestarPrometheusMiddleware
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from app.observability.metrics import PrometheusMiddleware
from tests.support import reported_by

PREFIX = "contract"  # series of this test's own, apart from the app's


@get("/items/{item_id:int}")
async def item(item_id: FromPath[int]) -> dict[str, int]:
    if item_id == 0:
        raise RuntimeError("a 500")
    return {"id": item_id}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(app_name: str) -> Samples:
    """This test's samples of ``app_name``, without those that depend on time (creation, durations)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        if family.name.startswith(PREFIX)
        for sample in family.samples
        if sample.labels.get("app_name") == app_name
        and not sample.name.endswith(("_created", "_bucket", "_sum"))
    }


def recorded(app_name: str, middleware_class: type[LitestarPrometheusMiddleware]) -> Samples:
    """The samples of a few requests through ``middleware_class``."""
    config = PrometheusConfig(
        app_name=app_name, prefix=PREFIX, group_path=True, middleware_class=middleware_class
    )
    app = Litestar([item], middleware=[config.middleware], debug=False, logging_config=None)
    with TestClient(app) as client:
        for path in ("/items/1", "/items/2", "/items/0", "/missing"):
            client.get(path)
        client.post("/items/1")
    return samples(app_name)


def test_the_cached_series_are_those_litestars_middleware_records() -> None:
    litestars = recorded("litestar", LitestarPrometheusMiddleware)
    ours = recorded("ours", PrometheusMiddleware)

    def relabelled(taken: Samples, app_name: str) -> Samples:
        return {
            (name, tuple((k, "app" if (k, v) == ("app_name", app_name) else v) for k, v in labels)): value
            for (name, labels), value in taken.items()
        }

    assert relabelled(ours, "ours") == relabelled(litestars, "litestar")
    assert any(name.endswith("requests_error_total") for name, _ in litestars)  # the 500 was counted
    assert len(litestars) >= 6


@pytest.mark.parametrize("kept", [True, False])
def test_a_kept_labelled_series_counts_into_the_multiprocess_directory(tmp_path: Path, kept: bool) -> None:
    script = textwrap.dedent(f"""
        import json
        from prometheus_client import CollectorRegistry, Counter
        from prometheus_client.multiprocess import MultiProcessCollector

        counter = Counter("kept_total", "a series kept across requests", ["path"])
        series = counter.labels("/items")
        for _ in range(3):
            (series if {kept} else counter.labels("/items")).inc()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(json.dumps([counter.labels("/items") is series, registry.get_sample_value(
            "kept_total", {{"path": "/items"}})]))
    """)

    same, counted = reported_by(script, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))

    assert same is True
    assert counted == 3
