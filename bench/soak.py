"""The soak: the service as production runs it (see stack.py) under a steady load for half an hour or more,
with retention periods short enough that the tables it prunes must level off within the run.

    uv run python bench/soak.py [--minutes 30] [--rate 100]

Load: ``--rate`` orders a second through the HTTP API, each with an Idempotency-Key of its own, by 20
regular users who refresh their tokens every 20 s and log out and in again every minute; besides them a
one-off visitor every two seconds registers, logs in and leaves, so sessions expire that no later login of
their user prunes. Settings: published events kept 60 s, refresh tokens and Idempotency-Keys valid 120 s,
the retention job every 10 s. Every minute it samples the rows of outbox, order_idempotency_key and
auth_session, the outbox's size on disk and each API worker's resident memory; the table goes between the
soak markers of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import platform
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from run import worker_rss
from stack import PASSWORD, ROOT, Stack, free_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
ORDER_BODY = {"items": [{"name": "Espresso beans", "quantity": 2, "price": "12.50"}]}
SETTINGS = {
    "RATE_LIMIT": "1000000000/minute",
    "AUTH_RATE_LIMIT": "1000000000/minute",
    "OUTBOX_RETENTION_SECONDS": "60",
    "ACCESS_TOKEN_TTL_SECONDS": "60",
    "REFRESH_TOKEN_TTL_SECONDS": "120",
    "IDEMPOTENCY_KEY_TTL_SECONDS": "120",
    "RETENTION_INTERVAL_SECONDS": "10",
}
REGULAR_USERS = 20
REFRESH_EVERY = 20.0  # seconds; the access token lives 60
NEW_SESSION_EVERY = 3  # refreshes; then the user logs in again and logs the old session out
LOGOUT_AFTER = 10.0  # seconds between the new session's login and the old one's logout
VISITOR_EVERY = 2.0  # seconds between one-off visitors
IN_FLIGHT = 200  # orders waiting for their answer at most (the client holds 256 connections)
VACUUMED = (
    " This PostgreSQL runs without autovacuum, so the soak runs VACUUM on the three tables before each"
    " sample, as autovacuum would about once a minute at these rates of deletion."
)
PRUNED = ("outbox", "order_idempotency_key", "auth_session")
COUNTS = {
    "outbox": "SELECT count(*) FROM outbox",
    "unsent": "SELECT count(*) FROM outbox WHERE sent_at IS NULL",
    "keys": "SELECT count(*) FROM order_idempotency_key",
    "sessions": "SELECT count(*) FROM auth_session",
    "orders": "SELECT count(*) FROM orders",
    "outbox MB": "SELECT pg_total_relation_size('outbox') / 1048576",
}


@dataclass
class User:
    email: str
    access: str = ""
    refresh: str = ""


@dataclass
class Tally:
    """What the load generator saw: answers by request and status."""

    answers: collections.Counter[str] = field(default_factory=collections.Counter)

    def record(self, what: str, response: httpx.Response | None) -> None:
        self.answers[f"{what} {response.status_code if response is not None else 'failed'}"] += 1


@dataclass
class Sample:
    minute: int
    counts: dict[str, int]
    rss_mb: list[float]
    deleted: dict[str, int]
    load: float  # the machine's load average over the last minute


async def request(http: httpx.AsyncClient, tally: Tally, what: str, **kwargs: Any) -> httpx.Response | None:
    method, path = what.split(" ", 1)
    try:
        response = await http.request(method, path, **kwargs)
    except httpx.HTTPError:
        response = None
    tally.record(what, response)
    return response


async def log_in(http: httpx.AsyncClient, tally: Tally, user: User) -> None:
    form = {"username": user.email, "password": PASSWORD}
    response = await request(http, tally, "POST /token", data=form)
    if response is not None and response.status_code == 200:
        user.access, user.refresh = response.json()["access_token"], response.json()["refresh_token"]


async def register(http: httpx.AsyncClient, tally: Tally) -> User:
    user = User(f"soak-{secrets.token_hex(6)}@example.com")
    await request(http, tally, "POST /register", json={"email": user.email, "password": PASSWORD})
    await log_in(http, tally, user)
    return user


async def keep_signed_in(http: httpx.AsyncClient, tally: Tally, user: User, until: float) -> None:
    """Refresh every ``REFRESH_EVERY`` seconds; every ``NEW_SESSION_EVERY`` refreshes, log in again (a new
    session) and log the old one out, so that the orders always carry a valid token."""
    await asyncio.sleep(REFRESH_EVERY * secrets.randbelow(1000) / 1000)  # the users spread out
    refreshes = 0
    while time.monotonic() < until:
        await asyncio.sleep(REFRESH_EVERY)
        refreshes += 1
        if refreshes % NEW_SESSION_EVERY:
            response = await request(http, tally, "POST /token/refresh", json={"refresh_token": user.refresh})
            if response is not None and response.status_code == 200:
                user.access, user.refresh = response.json()["access_token"], response.json()["refresh_token"]
            continue
        old = user.access
        await log_in(http, tally, user)
        await asyncio.sleep(LOGOUT_AFTER)  # the orders already sent with the old token are answered first
        await request(http, tally, "POST /logout", headers={"Authorization": f"Bearer {old}"})


async def visitors(http: httpx.AsyncClient, tally: Tally, until: float) -> None:
    """A one-off visitor every ``VISITOR_EVERY`` seconds: signs up, places an order, never comes back."""
    pending: set[asyncio.Task[None]] = set()

    async def visit() -> None:
        user = await register(http, tally)
        headers = {"Authorization": f"Bearer {user.access}", "Idempotency-Key": secrets.token_hex(16)}
        await request(http, tally, "POST /orders", json=ORDER_BODY, headers=headers)

    while time.monotonic() < until:
        task = asyncio.create_task(visit())
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(VISITOR_EVERY)
    await asyncio.gather(*pending)


async def create_orders(
    http: httpx.AsyncClient, tally: Tally, users: list[User], rate: float, until: float
) -> None:
    """``rate`` orders a second, on a fixed schedule whatever the answers take, each with its own key.

    At most ``IN_FLIGHT`` at once: an order due while the API is that far behind is not sent (and counted),
    rather than queued here to reach the API late, with a token expired meanwhile."""
    pending: set[asyncio.Task[httpx.Response | None]] = set()
    due, n = time.monotonic(), 0
    while due < until:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        due, n = due + 1 / rate, n + 1
        if len(pending) >= IN_FLIGHT:
            tally.answers[f"POST /orders not sent, {IN_FLIGHT} in flight"] += 1
            continue
        user = users[n % len(users)]
        headers = {"Authorization": f"Bearer {user.access}", "Idempotency-Key": secrets.token_hex(16)}
        task = asyncio.create_task(request(http, tally, "POST /orders", json=ORDER_BODY, headers=headers))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


async def retention_deleted(http: httpx.AsyncClient, urls: list[str]) -> dict[str, int]:
    """``orders_retention_deleted_total`` by table, from the first of ``urls`` that serves the metrics."""
    for url in urls:
        try:
            response = await http.get(url)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            found = re.findall(
                r'^orders_retention_deleted_total\{table="(\w+)"\} ([\d.e+]+)$', response.text, re.M
            )
            return {table: int(float(value)) for table, value in found}
    return {}


async def sample_every_minute(stack: Stack, minutes: int, metrics: list[str], vacuum: bool) -> list[Sample]:
    """Sample the stack every minute; if ``vacuum``, VACUUM the pruned tables first, as autovacuum would."""
    samples: list[Sample] = []
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as http:
        for minute in range(minutes + 1):
            await asyncio.sleep(max(0.0, started + 60 * minute - time.monotonic()))
            for table in PRUNED if vacuum else ():
                await stack.fetch(f"VACUUM {table}")
            counts = {name: await stack.count(query) for name, query in COUNTS.items()}
            deleted = await retention_deleted(http, metrics)
            sample = Sample(minute, counts, worker_rss(stack.api), deleted, psutil.getloadavg()[0])
            samples.append(sample)
            print(row(sample), flush=True)
    return samples


def row(sample: Sample) -> str:
    counts, deleted = sample.counts, sample.deleted
    rss = " / ".join(f"{mb:.0f}" for mb in sample.rss_mb)
    removed = " / ".join(f"{deleted.get(table, 0):,}" for table in PRUNED)
    return (
        f"| {sample.minute} | {counts['orders']:,} | {counts['outbox']:,} | {counts['unsent']:,} | "
        f"{counts['outbox MB']} | {counts['keys']:,} | {counts['sessions']:,} | {rss} | {removed} | "
        f"{sample.load:.1f} |"
    )


def report(samples: list[Sample], tally: Tally, minutes: int, rate: float, vacuum: bool) -> list[str]:
    revision = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(revision, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    settings = ", ".join(f"{name}={value}" for name, value in SETTINGS.items() if "RATE_LIMIT" not in name)
    answers = ", ".join(f"{key}: {n:,}" for key, n in sorted(tally.answers.items()))
    return [
        f"Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({psutil.cpu_count()} CPUs), "
        f"commit {commit}: {minutes} minutes, {rate:.0f} orders/s with an Idempotency-Key each, "
        f"{REGULAR_USERS} users refreshing every {REFRESH_EVERY:.0f} s and logging in again every "
        f"{REFRESH_EVERY * NEW_SESSION_EVERY:.0f} s, a one-off visitor every {VISITOR_EVERY:.0f} s; "
        f"{settings}." + (VACUUMED if vacuum else ""),
        "",
        "| minute | orders | outbox rows | unsent | outbox MB | Idempotency-Key rows | sessions | "
        "API worker RSS MB | deleted by retention: outbox / keys / sessions | load average |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(row(sample) for sample in samples),
        "",
        f"Answers: {answers}.",
    ]


def write_results(lines: list[str]) -> None:
    text = RESULTS.read_text()
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n## Soak\n\n{BEGIN}\n{END}\n"
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    RESULTS.write_text(before + BEGIN + "\n" + "\n".join(lines) + "\n" + END + after)


async def soak(
    stack: Stack, minutes: int, rate: float, metrics: list[str], vacuum: bool
) -> tuple[list[Sample], Tally]:
    """Load the running stack for ``minutes`` while sampling it every minute."""
    tally = Tally()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30, limits=limits) as http:
        users = [await register(http, tally) for _ in range(REGULAR_USERS)]
        until = time.monotonic() + 60 * minutes
        samples, _ = await asyncio.gather(
            sample_every_minute(stack, minutes, metrics, vacuum),
            asyncio.gather(
                create_orders(http, tally, users, rate, until),
                visitors(http, tally, until),
                *(keep_signed_in(http, tally, user, until) for user in users),
            ),
        )
    return samples, tally


async def main(minutes: int, rate: float) -> None:
    metrics_port = free_port()
    stack = Stack(settings={**SETTINGS, "METRICS_PORT": str(metrics_port)})
    # The API's metrics: on their own port where the API serves them apart, else beside the routes.
    metrics = [f"http://127.0.0.1:{metrics_port}/metrics", f"{stack.base_url}/metrics"]
    try:
        await stack.set_up()
        stack.worker.start()
        stack.consumer.start()
        print(f"logs in {stack.logs}", flush=True)
        # A PostgreSQL without autovacuum (a CI setting) never reuses the space of deleted rows.
        vacuum = (await stack.fetch("SHOW autovacuum"))[0][0] == "off"
        samples, tally = await soak(stack, minutes, rate, metrics, vacuum)
    finally:
        await stack.tear_down()
    lines = report(samples, tally, minutes, rate, vacuum)
    write_results(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30, help="length of the load")
    parser.add_argument("--rate", type=float, default=100, help="orders per second")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.minutes, arguments.rate))
