"""The service as production runs it, for the scripts in bench/: granian with two workers, the consumer and
a Celery worker, on the local PostgreSQL, Redis and RabbitMQ, in a database, exchange, queues and Redis
prefix of its own that ``tear_down`` removes. Service URLs come from BENCH_POSTGRES_URL, BENCH_REDIS_URL and
BENCH_AMQP_URL.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PROCESSED = "SELECT count(*) FROM orders WHERE processed_at IS NOT NULL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Role:
    """One process of the deployment, with its output in a log file."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log = command, env, log
        self.process: subprocess.Popen[bytes] | None = None
        self.logged_before = 0  # the log's size when the process was last started

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.logged_before = out.tell()
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    async def logged(self, text: str, within: float = 120) -> None:
        """Until this run of the process has written ``text`` to its log."""
        deadline = time.monotonic() + within
        while text.encode() not in self.log.read_bytes()[self.logged_before :]:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.command[0]} did not log {text!r} within {within} s; see {self.log}")
            await asyncio.sleep(0.01)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.process = None


def granian(target: str, port: int, workers: int = 2) -> list[str]:
    return [
        str(BIN / "granian"),
        "--interface",
        "asgi",
        "--workers",
        str(workers),
        "--port",
        str(port),
        target,
    ]


async def wait_healthy(url: str, log: Path) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(150):
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not answer; see {log}")


@dataclass
class Stack:
    """Everything of one run: names of its own, the three roles and their environment."""

    settings: dict[str, str] = field(default_factory=dict)
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orders-bench-")))
    port: int = field(default_factory=free_port)
    _connection: asyncpg.Connection | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.database = f"orders_bench_{self.suffix}"
        self.database_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{self.database}"
        self.exchange = f"orders-bench-{self.suffix}"
        self.queue = f"{self.exchange}.process_orders"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(self.logs)),
            "APP_ENV": "production",
            "PORT": str(self.port),
            "WORKERS": "2",
            "DATABASE_URL": self.database_url.replace("postgresql://", "postgresql+asyncpg://"),
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": f"bench-{self.suffix}",
            "AMQP_URL": AMQP_URL,
            "EVENTS_EXCHANGE": self.exchange,
            "CELERY_QUEUE": self.queue,
            "CONSUMER_METRICS_PORT": "0",
            "METRICS_PORT": "0",  # any free port: a stack never clashes with another service's
            "JWT_SECRET": secrets.token_urlsafe(48),
            **self.settings,
        }
        python, celery = str(BIN / "python"), str(BIN / "celery")
        self.api = Role([python, "-m", "app.serve"], self.env, self.logs / "api.log")
        self.consumer = Role([python, "-m", "app.consumer"], self.env, self.logs / "consumer.log")
        # A node name of its own: two Celery workers named alike on one host fight over their control queue.
        node = f"--hostname={self.queue}@%h"
        worker = [celery, "-A", "app.worker", "worker", node, "--concurrency=2", "--loglevel=INFO"]
        self.worker = Role(worker, self.env, self.logs / "worker.log")

    async def set_up(self) -> None:
        await self.create_database()
        self.api.start()
        await wait_healthy(f"{self.base_url}/health", self.api.log)

    async def create_database(self) -> None:
        await admin(f'CREATE DATABASE "{self.database}"')
        await asyncio.to_thread(
            subprocess.run, [str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=self.env, check=True
        )

    async def tear_down(self) -> None:
        for role in (self.consumer, self.worker, self.api):
            role.stop()
        if self._connection is not None:
            await self._connection.close()
        await admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"bench-{self.suffix}:*"))
        if keys:
            client.delete(*keys)
        connection = await aio_pika.connect(AMQP_URL)
        async with connection, connection.channel() as channel:
            # <exchange>.reference: the quorum queue bench/reference.py's R3 publishes to.
            queues = ("new_order", "new_order.dead", "reference")
            for name in (*(f"{self.exchange}.{queue}" for queue in queues), self.queue):
                await channel.queue_delete(name)
            # Celery declares an exchange named after its queue.
            for name in (self.exchange, f"{self.exchange}.dead", self.queue):
                await channel.exchange_delete(name)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        """One query (not two at once) on the run's connection: a connection per query would start a
        PostgreSQL backend each time, whose CPU bench/run.py would count as the pipeline's."""
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self.database_url)
        return await self._connection.fetch(query, *args)

    async def count(self, query: str, *args: object) -> int:
        [row] = await self.fetch(query, *args)
        return int(row[0])

    async def processed_at_least(self, target: int, within: float, every: float = 0.2) -> float:
        """Seconds until ``target`` orders are processed, checking ``every`` seconds."""
        started = time.monotonic()
        while (done := await self.count(PROCESSED)) < target:
            if time.monotonic() - started > within:
                raise SystemExit(f"only {done} of {target} orders processed after {within} s")
            await asyncio.sleep(every)
        return time.monotonic() - started


async def admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


PASSWORD = "bench password 1"


async def sign_up(http: httpx.AsyncClient, password: str = PASSWORD) -> tuple[str, str]:
    """A new account: its id and an access token."""
    email = f"bench-{secrets.token_hex(6)}@example.com"
    registered = await http.post("/register", json={"email": email, "password": password})
    assert registered.status_code == 201, registered.text
    tokens = await http.post("/token", data={"username": email, "password": password})
    assert tokens.status_code == 200, tokens.text
    return registered.json()["id"], tokens.json()["access_token"]
