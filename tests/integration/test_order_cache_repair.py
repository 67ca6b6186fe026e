"""Writes whose cache refresh failed are repaired by the process that made them, within bounds.

The cache talks to the real Redis through tests/proxy.py, which cuts it off and lets it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import msgspec
import pytest
from redis.asyncio import Redis

from app.orders.cache import OrderCache
from app.orders.models import OrderStatus
from app.orders.schemas import OrderItem, OrderRead
from app.storage.redis import create_redis
from app.storage.stores import AtomicRedisStore
from tests.proxy import Proxy, proxy_to
from tests.support import REDIS_URL


@dataclass
class Setup:
    proxy: Proxy
    direct: AtomicRedisStore  # another process's view of the same keys, never cut off
    namespace: str
    clients: list[Redis] = field(default_factory=list)

    def cache(self, ttl_seconds: int = 300, max_unrefreshed: int = 100) -> OrderCache:
        """The cache of a process whose Redis is behind the proxy."""
        redis = create_redis(self.proxy.url(REDIS_URL), 0.2)
        self.clients.append(redis)
        return OrderCache(AtomicRedisStore(redis, namespace=self.namespace), ttl_seconds, max_unrefreshed)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    namespace = f"test-{uuid4().hex}:order_cache"
    redis = Redis.from_url(REDIS_URL)
    direct = AtomicRedisStore(redis, namespace=namespace)
    try:
        with proxy_to(REDIS_URL) as proxy:
            setup = Setup(proxy, direct, namespace)
            yield setup
            for client in setup.clients:
                await client.aclose()
    finally:
        await direct.delete_all()
        await redis.aclose()


def an_order(status: OrderStatus = OrderStatus.PENDING, order_id: UUID | None = None) -> OrderRead:
    now = datetime.now(UTC)
    return OrderRead(
        id=order_id or uuid4(),
        user_id=uuid4(),
        items=(OrderItem(name="tea", quantity=1, price=Decimal("3.00")),),
        total_price=Decimal("3.00"),
        status=status,
        created_at=now,
        updated_at=now,
        processed_at=None,
    )


async def cached_version(store: AtomicRedisStore, order_id: UUID) -> int | None:
    entry = await store.get_versioned(str(order_id))
    return entry.version if entry else None


async def test_a_repair_never_replaces_a_newer_entry(setup: Setup) -> None:
    cache = setup.cache()
    order = an_order()
    await cache.put_read(order, version=1)

    setup.proxy.cut()
    await cache.put_read(msgspec.structs.replace(order, status=OrderStatus.PAID), version=2)
    setup.proxy.restore()
    shipped = msgspec.structs.replace(order, status=OrderStatus.SHIPPED)
    await setup.direct.put_if_newer(str(order.id), 3, msgspec.json.encode(shipped), 300)  # another process

    assert await cache.get(order.id) == shipped


async def test_while_redis_still_fails_a_read_of_an_unrepaired_order_goes_to_the_database(
    setup: Setup,
) -> None:
    cache = setup.cache()
    order = an_order()
    await cache.put_read(order, version=1)
    stale = {cache.key_of(order.id): b"1|" + msgspec.json.encode(order)}  # as the rate limiter reads it

    setup.proxy.cut()
    await cache.put_read(msgspec.structs.replace(order, status=OrderStatus.PAID), version=2)

    assert await cache.get(order.id, read_ahead=stale) is None  # not the stale entry read ahead


async def test_a_failed_write_is_forgotten_once_the_ttl_has_passed(setup: Setup) -> None:
    cache = setup.cache(ttl_seconds=1)
    order = an_order()

    setup.proxy.cut()
    await cache.put_read(order, version=1)
    await asyncio.sleep(1.1)  # any entry it failed to replace has expired by now
    setup.proxy.restore()
    await cache.put_read(an_order(), version=1)

    assert await cached_version(setup.direct, order.id) is None  # nothing stale left to repair


async def test_only_the_latest_failed_writes_are_remembered(setup: Setup) -> None:
    cache = setup.cache(max_unrefreshed=2)
    orders = [an_order() for _ in range(3)]

    setup.proxy.cut()
    for order in orders:
        await cache.put_read(order, version=1)
    setup.proxy.restore()
    await cache.get(uuid4())

    assert [await cached_version(setup.direct, order.id) for order in orders] == [None, 1, 1]
