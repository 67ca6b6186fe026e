"""Create 1,000 orders while the consumer and worker are stopped, bring them up, kill and restart them
a third of the way through, and check that exactly 1,000 orders end up processed, each exactly once.

    uv run python bench/pipeline_restarts.py [--orders 1000]

Runs the three roles as production does (granian with 2 workers, the consumer, a Celery worker) on the
local PostgreSQL, Redis and RabbitMQ, in a database, exchange, queues and Redis prefix of its own that it
removes at the end. Service URLs come from BENCH_POSTGRES_URL, BENCH_REDIS_URL and BENCH_AMQP_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
PASSWORD = "bench password 1"
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

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.process = None


@dataclass
class Deployment:
    """Everything of one run: names of its own, and the three roles."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pipeline-restarts-")))
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.database = f"orders_bench_{self.suffix}"
        self.database_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{self.database}"
        self.exchange = f"orders-bench-{self.suffix}"
        self.queue = f"{self.exchange}.process_order"
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(self.logs)),
            "APP_ENV": "production",
            "DATABASE_URL": self.database_url.replace("postgresql://", "postgresql+asyncpg://"),
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": f"bench-{self.suffix}",
            "AMQP_URL": AMQP_URL,
            "EVENTS_EXCHANGE": self.exchange,
            "CELERY_QUEUE": self.queue,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "RATE_LIMIT": "1000000/minute",
        }
        granian = [str(BIN / "granian"), "--interface", "asgi", "--workers", "2", "--port", str(self.port)]
        self.api = Role([*granian, "app.asgi:app"], env, self.logs / "api.log")
        self.consumer = Role([str(BIN / "python"), "-m", "app.consumer"], env, self.logs / "consumer.log")
        celery = [
            str(BIN / "celery"),
            "-A",
            "app.worker",
            "worker",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
        ]
        self.worker = Role(celery, env, self.logs / "worker.log")

    async def set_up(self) -> None:
        await admin(f'CREATE DATABASE "{self.database}"')
        await asyncio.to_thread(
            subprocess.run, [BIN / "alembic", "upgrade", "head"], cwd=ROOT, env=self.api.env, check=True
        )
        self.api.start()
        async with httpx.AsyncClient(base_url=self.base_url) as http:
            for _ in range(150):
                try:
                    if (await http.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
        raise SystemExit(f"the API did not start; see {self.api.log}")

    async def tear_down(self) -> None:
        for role in (self.consumer, self.worker, self.api):
            role.stop()
        await admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"bench-{self.suffix}:*"))
        if keys:
            client.delete(*keys)
        connection = await aio_pika.connect(AMQP_URL)
        async with connection, connection.channel() as channel:
            for name in (f"{self.exchange}.new_order", f"{self.exchange}.new_order.dead", self.queue):
                await channel.queue_delete(name)
            for name in (self.exchange, f"{self.exchange}.dead"):
                await channel.exchange_delete(name)

    async def count(self, query: str) -> int:
        connection = await asyncpg.connect(self.database_url)
        try:
            return int(await connection.fetchval(query))
        finally:
            await connection.close()

    async def processed_at_least(self, target: int, within: float) -> float:
        started = time.monotonic()
        while (done := await self.count(PROCESSED)) < target:
            if time.monotonic() - started > within:
                raise SystemExit(f"only {done} of {target} orders processed after {within} s")
            await asyncio.sleep(0.2)
        return time.monotonic() - started


async def admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def create_orders(base_url: str, count: int) -> float:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        email = f"bench-{secrets.token_hex(4)}@example.com"
        assert (await http.post("/register", json={"email": email, "password": PASSWORD})).status_code == 201
        token = (await http.post("/token", data={"username": email, "password": PASSWORD})).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        body = {"items": [{"name": "bench item", "quantity": 2, "price": "4.99"}]}
        gate = asyncio.Semaphore(32)

        async def create() -> None:
            async with gate:
                response = await http.post("/orders", json=body, headers=headers)
                assert response.status_code == 201, response.text

        started = time.monotonic()
        await asyncio.gather(*(create() for _ in range(count)))
        return time.monotonic() - started


def processed_per_order(log: Path) -> Counter[str]:
    """How many times the worker logged ``order processed`` for each order."""
    counts: Counter[str] = Counter()
    for text in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue  # Celery's banner
        if isinstance(line, dict) and line.get("event") == "order processed":
            counts[line["order_id"]] += 1
    return counts


async def run(deployment: Deployment, orders: int) -> bool:
    print(f"logs in {deployment.logs}\ncreating {orders} orders with the consumer and worker stopped ...")
    took = await create_orders(deployment.base_url, orders)
    print(f"  created in {took:.1f} s; processed so far: {await deployment.count(PROCESSED)}")

    print("starting the consumer and the worker ...")
    deployment.worker.start()
    deployment.consumer.start()
    await deployment.processed_at_least(orders // 3, within=120)
    print("  a third processed: killing the worker (SIGKILL), stopping the consumer (SIGTERM) ...")
    deployment.worker.stop(signal.SIGKILL)
    deployment.consumer.stop(signal.SIGTERM)
    before_restart = await deployment.count(PROCESSED)
    print(f"  processed when they stopped: {before_restart}; restarting both ...")
    deployment.worker.start()
    deployment.consumer.start()
    took = await deployment.processed_at_least(orders, within=300)
    await asyncio.sleep(2)  # let redelivered duplicates, if any, be handled too

    total = await deployment.count("SELECT count(*) FROM orders")
    processed = await deployment.count(PROCESSED)
    unsent = await deployment.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    per_order = processed_per_order(deployment.worker.log)
    twice = sum(1 for times in per_order.values() if times > 1)
    print(
        f"orders: {total}, processed: {processed}, unsent events: {unsent}, "
        f"processed per the worker's log: {len(per_order)}, of them more than once: {twice}; "
        f"the last {orders - before_restart} processed {took:.1f} s after the restart"
    )
    return total == processed == orders and unsent == 0 and len(per_order) == orders and twice == 0


async def main(orders: int) -> None:
    deployment = Deployment()
    try:
        await deployment.set_up()
        ok = await run(deployment, orders)
    finally:
        await deployment.tear_down()
    print("OK" if ok else "FAILED")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000)
    asyncio.run(main(parser.parse_args().orders))
