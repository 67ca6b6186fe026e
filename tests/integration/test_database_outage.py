"""The real PostgreSQL going away under the API: every route answers 503 with Retry-After, never 500, reads
survive connections that died in the pool, and a create either happened (201) or didn't (503).

The app reaches PostgreSQL through tests/proxy.py, which cuts every connection and refuses new ones, as a
database that is down or restarting does; or the database's backends are terminated, as a restart does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from uuid import uuid4

import asyncpg
import pytest
import structlog
from httpx import AsyncClient, Response

from app.storage.db import COMMAND_TIMEOUT_SECONDS, CONNECT_TIMEOUT_SECONDS
from app.web.errors import RETRY_AFTER_SECONDS
from tests.proxy import Proxy, proxy_to
from tests.support import (
    PASSWORD,
    POSTGRES_URL,
    Account,
    bearer,
    eventually,
    order_body,
    place_order,
    serving,
    settings_for,
    signed_up,
    token_request,
)


@dataclass
class Outage:
    client: AsyncClient
    proxy: Proxy
    account: Account
    order_id: str


@pytest.fixture
async def outage(own_database: str) -> AsyncIterator[Outage]:
    """An app whose PostgreSQL is behind the proxy, with an account and an order made while it was up."""
    with proxy_to(POSTGRES_URL) as proxy:
        async with serving(settings_for(proxy.url(own_database))) as client:
            account = await signed_up(client)
            order = await place_order(client, account, "4.00")
            yield Outage(client, proxy, account, order["id"])


def assert_unavailable(response: Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["detail"].startswith("The database is unavailable")


async def every_route(outage: Outage) -> dict[str, Response]:
    client, headers = outage.client, bearer(outage.account.tokens["access_token"])
    return {
        "register": await client.post(
            "/register", json={"email": f"{uuid4().hex}@example.com", "password": PASSWORD}
        ),
        "login": await token_request(client, outage.account.email, PASSWORD),
        "create": await client.post("/orders", json=order_body("2.50"), headers=headers),
        "read on a cache miss": await client.get(f"/orders/{uuid4()}", headers=headers),
        "list": await client.get("/orders", headers=headers),
        "status change": await client.patch(
            f"/orders/{outage.order_id}", json={"status": "PAID"}, headers=headers
        ),
    }


async def test_every_route_answers_503_while_the_database_is_unreachable(outage: Outage) -> None:
    outage.proxy.cut()
    try:
        with structlog.testing.capture_logs() as logs:
            answers = await every_route(outage)
    finally:
        outage.proxy.restore()
    for route, response in answers.items():
        assert response.status_code == 503, route
        assert_unavailable(response)
    # One warning per request, naming the cause; no "unhandled error" with a traceback.
    warnings = [entry for entry in logs if entry["event"] == "dependency unavailable"]
    assert len(warnings) == len(answers)
    assert all(entry["log_level"] == "warning" and entry["dependency"] == "database" for entry in warnings)
    assert all("Error" in entry["error"] for entry in warnings)
    assert not [entry for entry in logs if entry["log_level"] == "error"]


async def test_the_api_recovers_by_itself_once_the_database_is_back(outage: Outage) -> None:
    outage.proxy.cut()
    try:
        assert_unavailable(
            await outage.client.get("/orders", headers=bearer(outage.account.tokens["access_token"]))
        )
    finally:
        outage.proxy.restore()
    answers = await every_route(outage)
    assert {route: response.status_code for route, response in answers.items()} == {
        "register": 201,
        "login": 200,
        "create": 201,
        "read on a cache miss": 404,
        "list": 200,
        "status change": 200,
    }


async def test_a_database_that_stops_answering_on_open_connections_is_a_503_not_a_hang(
    outage: Outage,
) -> None:
    """A host cut off from PostgreSQL, or a primary that lost power, closes nothing: statements on the pool's
    open connections get no answer. A request gives up after the statement timeout, with a 503."""
    headers = bearer(outage.account.tokens["access_token"])
    outage.proxy.hold()
    try:
        within = (
            COMMAND_TIMEOUT_SECONDS + CONNECT_TIMEOUT_SECONDS + 5
        )  # rather than hang, should it never end
        listed = await asyncio.wait_for(outage.client.get("/orders", headers=headers), within)
        created = await asyncio.wait_for(
            outage.client.post("/orders", json=order_body("1.00"), headers=headers), within
        )
    finally:
        outage.proxy.release()
    assert_unavailable(listed)
    assert_unavailable(created)
    answers = await every_route(outage)
    assert answers["create"].status_code == 201
    assert answers["list"].status_code == 200


async def test_creates_during_an_outage_are_201_or_503_and_a_retry_loses_nothing(outage: Outage) -> None:
    """Creates run while the database goes away and comes back: each is created (201) or not (503), and
    retrying the refused ones with their Idempotency-Key creates each order exactly once."""
    client, headers = outage.client, bearer(outage.account.tokens["access_token"])

    async def create(key: str) -> Response:
        return await client.post(
            "/orders", json=order_body("1.00"), headers={**headers, "Idempotency-Key": key}
        )

    async def outage_midway() -> None:
        await asyncio.sleep(0.05)
        outage.proxy.cut()
        await asyncio.sleep(0.3)
        outage.proxy.restore()

    keys = [f"outage-{n}" for n in range(60)]
    try:
        answers, _ = await asyncio.gather(asyncio.gather(*(create(key) for key in keys)), outage_midway())
    finally:
        outage.proxy.restore()
    first = dict(zip(keys, answers, strict=True))
    assert {response.status_code for response in first.values()} <= {201, 503}
    for response in first.values():
        if response.status_code == 503:
            assert_unavailable(response)

    retried = {key: await create(key) for key, response in first.items() if response.status_code == 503}
    assert all(response.status_code in {200, 201} for response in retried.values())
    created = {
        response.json()["id"] for response in [*first.values(), *retried.values()] if response.is_success
    }
    listed = (await client.get("/orders", params={"limit": 100}, headers=headers)).json()
    assert len(created) == len(keys)
    assert created <= {order["id"] for order in listed}
    assert len(listed) == len(keys) + 1  # and the fixture's order: nothing created twice


async def test_connections_that_died_in_the_pool_are_replaced_before_use(own_database: str) -> None:
    """A restart ends every pooled connection; the next requests get new ones instead of failing."""
    async with serving(settings_for(own_database)) as client:
        account = await signed_up(client)
        order = await place_order(client, account, "3.00")
        headers = account.headers
        # Several requests at once, so that the pool holds several connections.
        await asyncio.gather(*(client.get("/orders", headers=headers) for _ in range(5)))

        await terminate_backends(own_database)

        answers: list[tuple[str, Response]] = [
            ("list", await client.get("/orders", headers=headers)),
            ("read on a cache miss", await client.get(f"/orders/{uuid4()}", headers=headers)),
            ("login", await token_request(client, account.email, PASSWORD)),
            ("create", await client.post("/orders", json=order_body("1.00"), headers=headers)),
            (
                "status change",
                await client.patch(f"/orders/{order['id']}", json={"status": "PAID"}, headers=headers),
            ),
        ]
        assert {route: response.status_code for route, response in answers} == {
            "list": 200,
            "read on a cache miss": 404,
            "login": 200,
            "create": 201,
            "status change": 200,
        }


async def terminate_backends(database_url: str) -> None:
    """End every connection to the database, as a restart does, and wait until they are gone."""
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        backends = await admin.fetchval(
            "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name
        )
        assert backends
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", backends)

        async def gone() -> bool:
            return not await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = any($1)", backends
            )

        await eventually(gone, "the database's backends to end", within=10)
    finally:
        await admin.close()


async def test_requests_in_flight_when_backends_are_terminated_are_never_a_500(own_database: str) -> None:
    """Backends terminated while every kind of request runs: each answers as usual or 503, never 500."""
    async with serving(settings_for(own_database)) as client:
        account = await signed_up(client)
        orders = [await place_order(client, account, "3.00") for _ in range(10)]
        headers = account.headers

        def requests() -> list[Awaitable[Response]]:
            email = f"{uuid4().hex}@example.com"
            return [
                client.get("/orders", headers=headers),
                client.get(f"/orders/{uuid4()}", headers=headers),
                token_request(client, account.email, PASSWORD),
                client.post("/register", json={"email": email, "password": PASSWORD}),
                client.post("/orders", json=order_body("1.00"), headers=headers),
            ]

        rounds = [asyncio.gather(*requests()) for _ in range(10)]
        patches = [
            client.patch(f"/orders/{order['id']}", json={"status": "PAID"}, headers=headers)
            for order in orders
        ]
        batches, _ = await asyncio.gather(
            asyncio.gather(*rounds, asyncio.gather(*patches)), terminate_backends(own_database)
        )
        responses = [response for batch in batches for response in batch]
        assert {response.status_code for response in responses} <= {200, 201, 404, 503}
        for response in responses:
            if response.status_code == 503:
                assert_unavailable(response)
