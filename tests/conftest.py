from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
import redis
from httpx import AsyncClient

from app.config import Settings
from tests.support import (
    REDIS_URL,
    Account,
    delete_topology,
    migrated_database,
    own_topology,
    serving,
    settings_for,
    signed_up,
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test run's own, migrated with plain `alembic upgrade head`, dropped at the end."""
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _run_topology() -> Iterator[None]:
    """Remove the exchanges and queues that this run's apps declared (see ``TEST_RUN``)."""
    yield
    asyncio.run(delete_topology(settings_for("")))


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of the test's own, for a test that must see no row of another."""
    with migrated_database() as url:
        yield url


@pytest.fixture
def settings(database_url: str) -> Iterator[Settings]:
    settings = settings_for(database_url)
    yield settings
    forget_redis_keys(settings.redis_key_prefix)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with serving(settings) as client:
        yield client


@contextmanager
def deployed(database_url: str) -> Iterator[Settings]:
    """A deployment's settings with its own exchange, queues and Redis keys, all removed at the end."""
    settings = own_topology(database_url)
    yield settings
    forget_redis_keys(settings.redis_key_prefix)
    asyncio.run(delete_topology(settings))


@pytest.fixture
def deployment(database_url: str) -> Iterator[Settings]:
    """A test's own deployment (``deployed``); no consumer runs: published events stay in the queue."""
    with deployed(database_url) as settings:
        yield settings


@pytest.fixture
async def alice(client: AsyncClient) -> Account:
    return await signed_up(client)


@pytest.fixture
async def bob(client: AsyncClient) -> Account:
    return await signed_up(client)


def forget_redis_keys(prefix: str) -> None:
    """Delete every key of one app's namespace: what a Redis restart does to it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
