"""The atomic store operations, on Redis and in memory alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from app.storage.stores import AtomicMemoryStore, AtomicRedisStore, AtomicStore
from tests.support import REDIS_URL


@pytest.fixture(params=["redis", "memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AtomicStore]:
    if request.param == "memory":
        yield AtomicMemoryStore()
        return
    redis = Redis.from_url(REDIS_URL)
    redis_store = AtomicRedisStore(redis, namespace=f"test-{uuid4().hex}")
    try:
        yield redis_store
    finally:
        await redis_store.delete_all()
        await redis.aclose()


async def test_hits_count_within_a_window(store: AtomicStore) -> None:
    windows = [await store.hit("client", 60) for _ in range(3)]

    assert [window.requests for window in windows] == [1, 2, 3]
    assert all(55 <= window.resets_in <= 60 for window in windows)
    assert (await store.hit("another client", 60)).requests == 1


async def test_concurrent_hits_are_all_counted(store: AtomicStore) -> None:
    windows = await asyncio.gather(*(store.hit("client", 60) for _ in range(50)))
    assert sorted(window.requests for window in windows) == list(range(1, 51))


async def test_a_window_starts_again_when_it_expires(store: AtomicStore) -> None:
    await store.hit("client", 1)
    await asyncio.sleep(1.1)
    assert (await store.hit("client", 1)).requests == 1


async def test_a_newer_version_replaces_an_older_one_and_never_the_reverse(store: AtomicStore) -> None:
    assert await store.put_if_newer("order", 2, b'{"status":"PAID"}', 60)
    assert not await store.put_if_newer("order", 1, b'{"status":"PENDING"}', 60)
    assert not await store.put_if_newer("order", 2, b'{"status":"PENDING"}', 60)
    assert await store.put_if_newer("order", 3, b'{"status":"SHIPPED"}', 60)

    stored = await store.get_versioned("order")

    assert stored is not None
    assert stored.version == 3
    assert stored.value == b'{"status":"SHIPPED"}'
    assert await store.get_versioned("unknown") is None


async def test_values_containing_the_separator_survive(store: AtomicStore) -> None:
    await store.put_if_newer("order", 7, b'{"name":"a|b|c"}', 60)
    assert await store.get_versioned("order") == (7, b'{"name":"a|b|c"}')


async def test_memory_store_drops_expired_entries_as_it_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AtomicMemoryStore, "PRUNE_AT", 10)
    store = AtomicMemoryStore()
    for client in range(10):
        await store.hit(f"client-{client}", 1)
    await asyncio.sleep(1.1)

    await store.hit("one more", 60)

    assert len(store) == 1  # nothing read the expired keys: only pruning removed them
    assert await store.exists("one more")
