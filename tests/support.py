"""Helpers shared by the tests: real services, settings for a test app, and the account flow over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import aio_pika
import asyncpg
import httpx
import msgspec
import pytest
from httpx import ASGITransport, AsyncClient, Response

from app.api import create_app
from app.config import RateLimit, Settings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once
JWT_SECRET = "test-secret-that-is-long-enough-for-production-use"
TEST_RUN = uuid4().hex[:8]
"""Names this test run's exchange and queues: runs never share a queue, nor leave messages for another."""
PASSWORD = "correct horse battery"


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def migrate(database_url: str) -> None:
    """Migrate the database with plain `alembic upgrade head`, as `just migrate` does."""
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


@contextmanager
def empty_database() -> Iterator[str]:
    """A new database with no table in it, dropped when the block ends."""
    name = f"orders_test_{uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def migrated_database() -> Iterator[str]:
    """A new database migrated with plain `alembic upgrade head`, dropped when the block ends."""
    with empty_database() as url:
        migrate(url)
        yield url


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """Settings for an app under test: real services, cheap Argon2, generous limits, its own Redis keys."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "database_pool_size": 5,  # several test runs may share one PostgreSQL and its max_connections
        "redis_url": REDIS_URL,
        "redis_key_prefix": f"test-{uuid4().hex}",
        "amqp_url": AMQP_URL,
        "events_exchange": f"orders-test-{TEST_RUN}",
        "celery_queue": f"orders-test-{TEST_RUN}.process_orders",
        "jwt_secret": JWT_SECRET,
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 8,
        "argon2_parallelism": 1,
        "rate_limit": RateLimit(requests=10_000, unit="minute"),
        "auth_rate_limit": RateLimit(requests=10_000, unit="minute"),
        "log_format": "console",
    }
    return Settings(**{**values, **overrides})


def own_topology(database_url: str) -> Settings:
    """Settings whose exchange and queues are the test's own (``delete_topology`` removes them)."""
    suffix = uuid4().hex[:8]
    return settings_for(
        database_url,
        events_exchange=f"orders-test-{suffix}",
        celery_queue=f"orders-test-{suffix}.process_orders",
    )


def same_stores(settings: Settings, **overrides: Any) -> Settings:
    """Another process of the same deployment: same database and Redis keys, possibly other settings."""
    return msgspec.structs.replace(settings, **overrides)


async def delete_topology(settings: Settings) -> None:
    """Remove the exchanges and queues of ``settings``' deployment from RabbitMQ, with their bindings (those
    of Celery's native delayed delivery too). Celery's ``celery_delayed_*`` exchanges and queues are the
    vhost's, shared by every deployment's worker: they stay."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        exchange = settings.events_exchange
        for queue in (f"{exchange}.new_order", f"{exchange}.new_order.dead", settings.celery_queue):
            await channel.queue_delete(queue)
        # Celery declares a (topic) exchange named after its queue.
        for name in (exchange, f"{exchange}.dead", settings.celery_queue):
            await channel.exchange_delete(name)


async def ready_in_queue(name: str) -> int:
    """How many messages wait in the RabbitMQ queue ``name``."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        declared = await channel.declare_queue(name, passive=True)
        return declared.declaration_result.message_count or 0


@asynccontextmanager
async def serving(settings: Settings, peer: str = "127.0.0.1") -> AsyncIterator[AsyncClient]:
    """A client of an app running in the test's own event loop, lifespan included, so that requests
    gathered together really run concurrently (Litestar's test client serialises them through a thread).

    ``peer`` is the address the app sees the connection come from."""
    app = create_app(settings)
    started, stopping = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:  # entered and left in one task, whichever tasks the fixtures run in
        async with app.lifespan():
            started.set()
            await stopping.wait()

    running = asyncio.create_task(lifespan())
    await asyncio.wait([running, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        running.result()  # startup failed: raise its error
    try:
        async with AsyncClient(
            # Litestar types its ASGI scope and events more narrowly than httpx's generic ASGI app.
            transport=ASGITransport(app=app, client=(peer, 123)),  # type: ignore[arg-type]
            base_url="http://orders.test",
        ) as client:
            yield client
    finally:
        stopping.set()
        await running


@dataclass
class Account:
    email: str
    password: str
    id: str = ""
    tokens: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.tokens["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_email() -> str:
    return f"user-{uuid4().hex[:12]}@example.com"


async def register(client: AsyncClient, email: str | None = None, password: str = PASSWORD) -> Account:
    account = Account(email=email or new_email(), password=password)
    response = await client.post("/register", json={"email": account.email, "password": password})
    assert response.status_code == 201, response.text
    account.id = response.json()["id"]
    return account


async def login(client: AsyncClient, account: Account) -> Account:
    response = await token_request(client, account.email, account.password)
    assert response.status_code == 200, response.text
    account.tokens = response.json()
    return account


async def signed_up(client: AsyncClient) -> Account:
    return await login(client, await register(client))


async def token_request(client: AsyncClient, username: str, password: str) -> Response:
    return await client.post("/token", data={"username": username, "password": password})


def order_body(*prices: str, quantity: int = 1) -> dict[str, Any]:
    return {
        "items": [
            {"name": f"item {n}", "quantity": quantity, "price": price} for n, price in enumerate(prices)
        ]
    }


async def place_order(client: AsyncClient, account: Account, *prices: str) -> dict[str, Any]:
    response = await client.post("/orders", json=order_body(*(prices or ("10.00",))), headers=account.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


PRODUCTION_ENVIRON = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/orders",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
    "JWT_SECRET": "a-production-like-secret-of-more-than-32-characters",
}
"""A production process's environment, for a fresh interpreter that loads a role without connecting."""


def clean_env(**values: str) -> dict[str, str]:
    """Only what a fresh shell has, plus ``values``: nothing leaks in from the test run's environment."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **values}


def production_api_env(port: int, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of `just serve` (``python -m app.serve``: granian, two workers, production settings)
    on ``port``, with the machine's services, Redis keys of its own and cheap Argon2; ``settings`` on top."""
    production = {
        "APP_ENV": "production",
        "PORT": str(port),
        "METRICS_PORT": "0",  # any free port: several APIs may run on this host
        "WORKERS": "2",
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"test-api-{port}",
        "AMQP_URL": AMQP_URL,
        "EVENTS_EXCHANGE": f"orders-test-{TEST_RUN}",
        "JWT_SECRET": JWT_SECRET,
        "ARGON2_MEMORY_COST_KIB": "8",
        "ARGON2_TIME_COST": "1",
        "ARGON2_PARALLELISM": "1",
    }
    return clean_env(**{**production, **settings})


def fresh_interpreter(script: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """``script`` run by a new interpreter in the project, in ``PRODUCTION_ENVIRON`` plus ``environ``:
    nothing leaks in from the test run but PATH and HOME."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        **PRODUCTION_ENVIRON,
        **environ,
    }
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def reported_by(script: str, **environ: str) -> Any:
    """The JSON that ``script`` printed last, run by ``fresh_interpreter``; it must succeed."""
    done = fresh_interpreter(script, **environ)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(
    base_url: str, process: subprocess.Popen[bytes], output: Callable[[], str], within: float = 60
) -> None:
    """Return once the API at ``base_url``, served by ``process``, answers ``/health``; else stop it and fail
    with its ``output()``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    if process.poll() is None:
        process.kill()
        process.wait()
    pytest.fail(f"the API did not start:\n{output()}")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 15.0) -> None:
    """Poll ``check`` until it holds, or fail naming ``what`` was awaited."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.1)
