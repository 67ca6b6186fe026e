from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from uuid import uuid4

import asyncpg
import pytest
import redis
from httpx import AsyncClient

from app.config import Settings
from tests.support import POSTGRES_URL, REDIS_URL, ROOT, serving, settings_for


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test run's own, migrated with plain `alembic upgrade head`, dropped at the end."""
    with new_database() as url:
        yield url


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of the test's own, for a test that must see no row of another."""
    with new_database() as url:
        yield url


@contextmanager
def new_database() -> Iterator[str]:
    name = f"orders_test_{uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url},
            check=True,
            capture_output=True,
        )
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def settings(database_url: str) -> Iterator[Settings]:
    settings = settings_for(database_url)
    yield settings
    forget_redis_keys(settings.redis_key_prefix)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with serving(settings) as client:
        yield client


def forget_redis_keys(prefix: str) -> None:
    """Delete every key of one app's namespace: what a Redis restart does to it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
