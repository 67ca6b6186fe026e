"""/metrics reflects what the API did."""

from __future__ import annotations

from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import RateLimit, Settings
from tests.support import eventually, new_email, place_order, same_stores, serving, signed_up, token_request


async def samples(client: AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(taken: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (sample, have), v in taken.items() if sample == name and wanted <= have)


async def test_creating_an_order_and_reading_it_twice_moves_the_counters(client: AsyncClient) -> None:
    alice = await signed_up(client)
    before = await samples(client)

    order = await place_order(client, alice)
    for _ in range(2):
        assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).status_code == 200
    after = await samples(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    async def published() -> bool:  # the event goes out in the background, just after the response
        nonlocal after
        after = await samples(client)
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
        before = value(await samples(client), "orders_rate_limited_total", store="auth_rate_limit")
        statuses = [(await token_request(client, new_email(), "whatever")).status_code for _ in range(3)]
        after = value(await samples(client), "orders_rate_limited_total", store="auth_rate_limit")

    assert statuses == [401, 429, 429]
    assert after - before == 2
