"""CPU time per request of the API's hot paths, measured inside one process.

    uv run python bench/profile.py [--requests 20000] [--only S1]
    uv run python bench/profile.py --only S1 --only S1r    # the pipelined Redis connection's share of S1
    uv run python bench/profile.py --only S1 --only M1 --only M2    # the metrics middleware's share of S1
    uv run py-spy record -o s1.svg -- .venv/bin/python bench/profile.py --only S1    # where it goes

wrk's figures (bench/run.py) move with everything else this machine runs. This drives the app's ASGI
callable directly, with production settings on the real PostgreSQL, Redis and RabbitMQ (a database,
exchange and Redis prefix of its own, removed at the end), and reports the CPU time the API process spends
per request: the figure that code changes move, and the budget the targets are measured against. The two
reference apps of the benchmark are measured the same way. The HTTP server's own work (granian parses
requests and writes responses outside Python) is not included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, redirect_stderr
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the app

import uvloop
from litestar import Litestar
from litestar.plugins.prometheus import PrometheusMiddleware as LitestarPrometheusMiddleware
from reference import bare, bare_reply, one_redis_get
from run import DEPTH, insert_orders
from stack import PASSWORD, Stack

from app.api import create_app
from app.config import Settings
from app.observability.metrics import PrometheusMiddleware, prometheus_config
from app.orders.schemas import Position, encode_cursor
from app.storage.redis import create_redis
from app.storage.stores import AtomicRedisStore

ORDER = {
    "items": [
        {"name": "Espresso beans", "quantity": 2, "price": "12.50"},
        {"name": "Filter papers", "quantity": 1, "price": "3.90"},
    ]
}
CONCURRENCY = 16

Request = Callable[[], Awaitable[int]]


class Client:
    """A minimal ASGI client: an HTTP client library would spend more CPU per request than some of the
    paths it measures."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None, query: str = ""
    ) -> tuple[int, bytes]:
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {**(headers or {}), "content-type": "application/json"}
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body or b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        status, content = sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])
        assert status < 300, (method, path, status, content[:300])
        return status, content

    async def json(self, *args: Any, **kwargs: Any) -> Any:
        return json.loads((await self(*args, **kwargs))[1])

    def request(self, *args: Any, **kwargs: Any) -> Request:
        async def call() -> int:
            return (await self(*args, **kwargs))[0]

        return call


async def measure(call: Request, requests: int) -> tuple[float, float]:
    """CPU microseconds per request, and requests per second, ``CONCURRENCY`` requests at a time."""
    for _ in range(200):  # warm up: caches, pools, prepared statements
        await call()

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1e6, requests / wall


async def signed_up(client: Client, email: str) -> tuple[str, dict[str, str]]:
    """A new account's id and its Authorization header."""
    user = await client.json("POST", "/register", body={"email": email, "password": PASSWORD})
    form = f"username={email}&password={PASSWORD}".replace(" ", "+").encode()
    tokens = await client.json("POST", "/token", {"content-type": "application/x-www-form-urlencoded"}, form)
    return user["id"], {"authorization": f"Bearer {tokens['access_token']}"}


async def api_scenarios(client: Client, stack: Stack) -> dict[str, tuple[str, Request]]:
    """The benchmark's scenarios, on an account seeded with 25 orders (S2 creates for another one, so that
    the list S3 reads stays as it is), and S6 and S7 on one with ``DEPTH`` + 100."""
    user_id, auth = await signed_up(client, "reader@example.com")
    orders = [(await client.json("POST", "/orders", auth, ORDER))["id"] for _ in range(25)]
    _, creator = await signed_up(client, "creator@example.com")
    page = f"/orders/user/{user_id}"
    deep, cursor = await deep_account(client, stack)
    return {
        "S1": ("GET /orders/{id} (cache hit)", client.request("GET", f"/orders/{orders[0]}", auth)),
        # S1 again once the limiter counts through redis-py's client (see plain_redis_limiter): run last.
        "S1r": (
            "GET /orders/{id} (cache hit), limiter on redis-py",
            client.request("GET", f"/orders/{orders[0]}", auth),
        ),
        "S2": ("POST /orders", client.request("POST", "/orders", creator, ORDER)),
        "S3": ("GET /orders/user/{id}?limit=20", client.request("GET", page, auth, query="limit=20")),
        "S4": ("GET /health", client.request("GET", "/health")),
        "S6": (
            f"GET /orders?limit=20, {DEPTH:,} deep by cursor",
            client.request("GET", "/orders", deep, query=f"limit=20&cursor={cursor}"),
        ),
        "S7": (
            f"GET /orders?limit=20, {DEPTH:,} deep by offset",
            client.request("GET", "/orders", deep, query=f"limit=20&offset={DEPTH}"),
        ),
    }


async def deep_account(client: Client, stack: Stack) -> tuple[dict[str, str], str]:
    """An account with ``DEPTH`` + 100 orders: its Authorization header, and the cursor ``DEPTH`` deep."""
    user_id, auth = await signed_up(client, "deep@example.com")
    await insert_orders(stack, UUID(user_id), DEPTH + 100)
    [last] = await stack.fetch(
        "SELECT created_at, id FROM orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC "
        "OFFSET $2 LIMIT 1",
        UUID(user_id),
        DEPTH - 1,
    )
    return auth, encode_cursor(Position(last["created_at"], last["id"]))


async def run(stack: Stack, requests: int, only: set[str]) -> None:
    async def row(key: str, title: str, call: Request) -> None:
        if not only or key in only:
            cpu, rate = await measure(call, requests)
            print(f"| {key} | {title} | {cpu:,.0f} | {rate:,.0f} |", flush=True)

    for key, title, reference in (
        ("R1", "reference: bare route", bare),
        ("R2", "reference: one Redis GET", one_redis_get),
        ("M1", "bare route, Litestar's Prometheus middleware", metered(LitestarPrometheusMiddleware)),
        ("M2", "bare route, the API's Prometheus middleware", metered(PrometheusMiddleware)),
    ):
        async with reference.lifespan():
            await row(key, title, Client(reference).request("GET", "/"))
    settings = Settings.from_env(stack.env)
    app = create_app(settings)
    async with app.lifespan(), plain_redis_limiter(app, settings) as switch:
        scenarios = await api_scenarios(Client(app), stack)
        on_redis_py = scenarios.pop("S1r")
        for key, (title, call) in scenarios.items():
            await row(key, title, call)
            await published(stack)
        switch()  # last: every scenario after it would count its requests through redis-py too
        await row("S1r", *on_redis_py)


def metered(middleware: type[LitestarPrometheusMiddleware]) -> Litestar:
    """R1's route behind a Prometheus middleware configured as the API's: M1 - M2 is what the API's
    (each route's series looked up once) saves per request."""
    config = replace(prometheus_config(), middleware_class=middleware)
    return Litestar([bare_reply], middleware=[config.middleware], logging_config=None, openapi_config=None)


@asynccontextmanager
async def plain_redis_limiter(app: Litestar, settings: Settings) -> AsyncIterator[Callable[[], None]]:
    """A switch that puts the rate limits' stores (same keys) on a redis-py client of their own with
    ``pipelined`` off: the limiter's call then goes through redis-py, as every other Redis call does."""
    redis = create_redis(settings.redis_url or "", settings.redis_timeout_seconds)

    def switch() -> None:
        for name in ("rate_limit", "auth_rate_limit"):
            store = AtomicRedisStore(redis, f"{settings.redis_key_prefix}:{name}", pipelined=False)
            app.stores.register(name, store, allow_override=True)

    try:
        yield switch
    finally:
        await redis.aclose()


async def published(stack: Stack) -> None:
    """Until the outbox sent every event the scenario created: the next one must not pay for them."""
    deadline = time.monotonic() + 300
    while await stack.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
        if time.monotonic() > deadline:
            raise SystemExit("the outbox still holds unsent events after 300 s")
        await asyncio.sleep(0.2)


async def main(requests: int, only: set[str]) -> None:
    stack = Stack(settings={"RATE_LIMIT": "1000000000/minute", "AUTH_RATE_LIMIT": "1000000000/minute"})
    print("| | scenario | CPU µs per request | req/s, one process |\n|---|---|---:|---:|")
    try:
        await stack.create_database()
        with (
            (stack.logs / "api.log").open("a") as log,
            redirect_stderr(log),
        ):  # a log line per request, as in production
            await run(stack, requests, only)
    finally:
        await stack.tear_down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per scenario")
    parser.add_argument(
        "--only", action="append", default=[], help="a scenario key (R1, S1, ...); repeatable"
    )
    arguments = parser.parse_args()
    uvloop.run(main(arguments.requests, set(arguments.only)))  # granian's loop, where it is installed
