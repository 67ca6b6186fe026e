"""The order cache: reads come from Redis, writes refresh it, and Redis trouble never fails a request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import asyncpg
import msgspec
import pytest
import redis.asyncio
from prometheus_client import REGISTRY
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.config import Settings
from app.orders.cache import OrderCache
from app.orders.models import OrderStatus
from app.orders.schemas import OrderItem, OrderRead
from app.storage.redis_pipe import PipelinedRedis
from app.storage.stores import AtomicRedisStore
from tests.proxy import proxy_to
from tests.support import REDIS_URL, UNREACHABLE_REDIS_URL, place_order, same_stores, serving, signed_up


async def change_behind_the_service(database_url: str, statement: str, *args: Any) -> None:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


def cache_key(settings: Settings, order_id: str) -> str:
    return f"{settings.redis_key_prefix}:order_cache:{order_id}"


async def test_reads_are_served_from_the_cache_until_a_write_refreshes_it(settings: Settings) -> None:
    async with serving(settings) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice, "10.00")
        path = f"/orders/{order['id']}"
        assert (await client.get(path, headers=alice.headers)).status_code == 200  # the miss fills it

        await change_behind_the_service(
            settings.database_url, "UPDATE orders SET total_price = 999.99 WHERE id = $1", order["id"]
        )
        cached = (await client.get(path, headers=alice.headers)).json()
        patched = (await client.patch(path, json={"status": "PAID"}, headers=alice.headers)).json()
        refreshed = (await client.get(path, headers=alice.headers)).json()

    assert cached["total_price"] == "10.00"  # the row changed, the cache answered
    assert patched["total_price"] == refreshed["total_price"] == "999.99"
    assert refreshed["status"] == "PAID"


async def test_a_read_right_after_a_write_in_another_process_sees_the_write(settings: Settings) -> None:
    async with serving(settings) as first, serving(same_stores(settings)) as second:
        alice = await signed_up(first)
        order = await place_order(first, alice)
        path = f"/orders/{order['id']}"
        assert (await first.get(path, headers=alice.headers)).json()["status"] == "PENDING"

        await second.patch(path, json={"status": "PAID"}, headers=alice.headers)

        assert (await first.get(path, headers=alice.headers)).json()["status"] == "PAID"


async def test_entries_expire_after_the_cache_ttl(settings: Settings) -> None:
    async with serving(same_stores(settings, cache_ttl_seconds=120)) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice)
        assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).status_code == 200

    client_redis = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        ttl = await client_redis.ttl(cache_key(settings, order["id"]))
    finally:
        await client_redis.aclose()
    assert 110 <= ttl <= 120


async def test_a_miss_fills_the_cache(settings: Settings) -> None:
    async with serving(settings) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice, "10.00")
        client_redis = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            await client_redis.delete(cache_key(settings, order["id"]))
            assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).status_code == 200
            assert await client_redis.exists(cache_key(settings, order["id"]))
        finally:
            await client_redis.aclose()


@pytest.fixture
def order_reads() -> Iterator[list[str]]:
    """Every SELECT on the orders table, as the database driver receives it."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM orders" in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield statements
    event.remove(Engine, "before_cursor_execute", record)


async def test_concurrent_misses_of_one_order_read_the_database_once(
    settings: Settings, order_reads: list[str]
) -> None:
    async with serving(settings) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice)
        client_redis = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            await client_redis.delete(cache_key(settings, order["id"]))
        finally:
            await client_redis.aclose()
        order_reads.clear()

        # Hold every read of the orders table until all 20 requests have missed the cache and wait on it.
        blocker = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                reads = asyncio.gather(
                    *(client.get(f"/orders/{order['id']}", headers=alice.headers) for _ in range(20))
                )
                await asyncio.sleep(0.5)
            answers = await reads
        finally:
            await blocker.close()

    assert {response.status_code for response in answers} == {200}
    assert len(order_reads) == 1


async def test_without_redis_orders_work_from_the_database(settings: Settings) -> None:
    async with serving(same_stores(settings, redis_url=UNREACHABLE_REDIS_URL)) as client:
        await assert_order_flow_works(client)


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A server that accepts connections and never answers: Redis hung or a network black hole."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"redis://127.0.0.1:{port}/0"


async def test_a_redis_that_does_not_answer_costs_time_not_errors(
    settings: Settings, silent_redis: str
) -> None:
    async with serving(same_stores(settings, redis_url=silent_redis, redis_timeout_seconds=0.05)) as client:
        await assert_order_flow_works(client)


async def assert_order_flow_works(client: Any) -> None:
    alice = await signed_up(client)
    order = await place_order(client, alice, "2.50")
    path = f"/orders/{order['id']}"
    assert (await client.get(path, headers=alice.headers)).status_code == 200
    patched = await client.patch(path, json={"status": "PAID"}, headers=alice.headers)
    assert patched.status_code == 200
    assert (await client.get(path, headers=alice.headers)).json()["status"] == "PAID"
    assert (await client.get("/orders", headers=alice.headers)).status_code == 200


async def test_a_cached_read_costs_one_redis_round_trip(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(settings) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice)
        path = f"/orders/{order['id']}"
        assert (
            await client.get(path, headers=alice.headers)
        ).status_code == 200  # sessions synced, order cached

        commands: list[str] = []
        send: Callable[..., Awaitable[Any]] = redis.asyncio.Redis.execute_command  # untyped in redis-py
        send_pipelined = PipelinedRedis.execute

        async def counted(self: redis.asyncio.Redis, *args: Any, **options: Any) -> Any:
            commands.append(str(args[0]))
            return await send(self, *args, **options)

        async def counted_pipelined(self: PipelinedRedis, *args: Any) -> Any:
            commands.append(str(args[0]))
            return await send_pipelined(self, *args)

        # Both ways to Redis: redis-py's client, and the connection the request path pipelines on.
        monkeypatch.setattr(redis.asyncio.Redis, "execute_command", counted)
        monkeypatch.setattr(PipelinedRedis, "execute", counted_pipelined)
        response = await client.get(path, headers=alice.headers)

    assert response.json() == order
    assert commands == ["EVALSHA"]  # rate limit, revocation check and cache entry in one call


async def read_entry(settings: Settings, order_id: str) -> bytes | None:
    client_redis = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        entry = await client_redis.get(cache_key(settings, order_id))
        assert not isinstance(entry, str)  # a client without decode_responses reads bytes
        return entry
    finally:
        await client_redis.aclose()


async def write_entry(settings: Settings, order_id: str, value: bytes) -> None:
    client_redis = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await client_redis.set(cache_key(settings, order_id), value, ex=300)
    finally:
        await client_redis.aclose()


def cache_errors() -> float:
    return REGISTRY.get_sample_value("orders_cache_reads_total", {"result": "error"}) or 0.0


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(b"garbage", id="no-version"),
        pytest.param(b'999|{"id": "not a uuid", "status": 7}', id="wrong-shape-high-version"),
        pytest.param(b'1|{"id": "00000000-0000-0000-0000-000000000000"}', id="older-shape"),
    ],
)
async def test_an_unreadable_entry_is_a_miss_and_is_repaired(settings: Settings, entry: bytes) -> None:
    async with serving(settings) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice, "10.00")
        path = f"/orders/{order['id']}"
        await write_entry(settings, order["id"], entry)
        errors = cache_errors()

        first = await client.get(path, headers=alice.headers)
        repaired = await read_entry(settings, order["id"])
        second = await client.get(path, headers=alice.headers)

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == order
    assert cache_errors() == errors + 1  # the second read was a hit on the repaired entry
    assert repaired is not None
    assert repaired.startswith(b"1|")
    assert msgspec.json.decode(repaired.partition(b"|")[2]) == order


async def test_a_write_whose_refresh_failed_is_repaired_before_the_next_read(settings: Settings) -> None:
    with proxy_to(REDIS_URL) as proxy:
        async with serving(same_stores(settings, redis_url=proxy.url(REDIS_URL))) as client:
            alice = await signed_up(client)
            order = await place_order(client, alice)
            path = f"/orders/{order['id']}"
            assert (await client.get(path, headers=alice.headers)).json()["status"] == "PENDING"  # cached

            proxy.cut()
            patched = await client.patch(path, json={"status": "PAID"}, headers=alice.headers)
            proxy.restore()
            read = await client.get(path, headers=alice.headers)
            entry = await read_entry(settings, order["id"])

    assert patched.status_code == 200, patched.text
    assert read.status_code == 200
    assert read.json() == patched.json()
    assert read.json()["status"] == "PAID"
    assert entry is not None
    assert entry.startswith(b"2|")  # repaired for every process, not just served from this one's memory


async def test_an_entry_another_process_wrote_is_served_as_written(settings: Settings) -> None:
    async with serving(settings) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice)
        path = f"/orders/{order['id']}"
        for _ in range(2):  # cached, then a hit: its decoded form is remembered
            assert (await client.get(path, headers=alice.headers)).json() == order
        entry = await read_entry(settings, order["id"])
        assert entry is not None
        version, _, _ = entry.partition(b"|")
        paid = {**order, "status": "PAID"}
        await write_entry(settings, order["id"], b"%d|%b" % (int(version) + 1, msgspec.json.encode(paid)))

        read = await client.get(path, headers=alice.headers)

    assert read.json() == paid


async def test_a_reader_of_a_cached_order_cannot_change_what_the_next_reader_gets() -> None:
    """A hit hands every reader of an entry the same decoded order: it can't be changed."""
    redis_client = redis.asyncio.Redis.from_url(REDIS_URL)
    store = AtomicRedisStore(redis_client, namespace=f"test-{uuid4().hex}:order_cache")
    cache = OrderCache(store, ttl_seconds=300)
    now = datetime.now(UTC)
    item = OrderItem(name="tea", quantity=1, price=Decimal("3.00"))
    order = OrderRead(uuid4(), uuid4(), (item,), Decimal("3.00"), OrderStatus.PENDING, now, now, None)
    try:
        await cache.put_read(order, version=1)
        read = await cache.get(order.id)
        assert read is not None

        with pytest.raises(AttributeError):
            read.status = OrderStatus.CANCELED  # type: ignore[misc]
        with pytest.raises(AttributeError):
            read.items[0].price = Decimal("0.01")  # type: ignore[misc]
        with pytest.raises(AttributeError):
            read.items.append(item)  # type: ignore[attr-defined]

        assert msgspec.json.encode(await cache.get(order.id)) == msgspec.json.encode(order)
    finally:
        await store.delete_all()
        await redis_client.aclose()
