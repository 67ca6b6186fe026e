"""The API's metrics: what the app counts, and ``python -m app.serve`` serving them on a port of their own."""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.config import RateLimit, Settings
from tests.integration.test_processes import production_api
from tests.support import (
    eventually,
    free_port,
    new_email,
    place_order,
    same_stores,
    serving,
    signed_up,
    token_request,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parsed(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def samples() -> Samples:
    """What the apps of this test process counted: they run in process, their metrics in the default
    registry (no multiprocess directory here)."""
    return parsed(generate_latest(REGISTRY).decode())


def value(taken: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (sample, have), v in taken.items() if sample == name and wanted <= have)


async def test_creating_an_order_and_reading_it_twice_moves_the_counters(client: httpx.AsyncClient) -> None:
    alice = await signed_up(client)
    before = samples()

    order = await place_order(client, alice)
    for _ in range(2):
        assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).status_code == 200
    after = samples()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    async def published() -> bool:  # the event goes out in the background, just after the response
        nonlocal after
        after = samples()
        return moved("orders_events_published_total", topic="new_order") == 1

    await eventually(published, "the order's event to be published")

    assert moved("orders_placed_total") == 1
    # A new order has no entry until its processing writes one (no worker runs here): the first read is a
    # miss that fills it, the second a hit.
    assert moved("orders_cache_reads_total", result="miss") == 1
    assert moved("orders_cache_reads_total", result="hit") == 1
    assert moved("orders_requests_total", path="/orders/{order_id}", method="GET", status_code="200") == 2
    assert moved("orders_request_duration_seconds_count", path="/orders", method="POST") == 1
    assert ("orders_outbox_pending", frozenset()) in after
    assert ("orders_outbox_oldest_pending_age_seconds", frozenset()) in after


async def test_rate_limited_requests_are_counted(settings: Settings) -> None:
    async with serving(same_stores(settings, auth_rate_limit=RateLimit(requests=1, unit="minute"))) as client:
        before = value(samples(), "orders_rate_limited_total", store="auth_rate_limit")
        statuses = [(await token_request(client, new_email(), "whatever")).status_code for _ in range(3)]
        after = value(samples(), "orders_rate_limited_total", store="auth_rate_limit")

    assert statuses == [401, 429, 429]
    assert after - before == 2


async def test_the_api_serves_every_workers_metrics_on_the_metrics_port_only(database_url: str) -> None:
    metrics_port, probes = free_port(), 20
    with production_api(database_url, METRICS_PORT=str(metrics_port)) as (base_url, _):
        async with httpx.AsyncClient(base_url=base_url) as public:
            assert (await public.get("/metrics")).status_code == 404
        for _ in range(probes):  # each on a connection of its own, which either granian worker may take
            async with httpx.AsyncClient(base_url=base_url) as fresh:
                await fresh.get("/health/ready")

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as metrics:

            async def all_counted() -> bool:  # a request is counted just after its response is sent
                scraped = parsed((await metrics.get("/metrics")).text)
                return value(scraped, "orders_requests_total", path="/health/ready") == probes

            await eventually(all_counted, f"the {probes} readiness probes to be counted")
