"""The benchmark: ``just bench`` (``uv run python bench/run.py``).

Starts the service as production runs it (see stack.py) and two reference servers on granian with two
workers, loads them with wrk from a separate process on loopback, and writes the results between the
markers of bench/RESULTS.md. Every HTTP scenario runs twice; ratios to the references are computed within
the same run, because this machine's absolute figures drift from one minute to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import httpx
import psutil
from stack import PASSWORD, PROCESSED, Role, Stack, free_port, granian, sign_up, wait_healthy

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ORDER_BODY = {"items": [{"name": "Espresso beans", "quantity": 2, "price": "12.50"}]}


@dataclass
class Load:
    """What wrk measured."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    peak_rss_mb: float = 0.0


@dataclass
class Scenario:
    key: str
    title: str
    url: str
    script: str = "get.lua"
    token: str = ""
    runs: list[Load] = field(default_factory=list)


def wrk(url: str, script: str, token: str, seconds: int, connections: int, *, pause_ms: float = 0) -> Load:
    """Run wrk and read its report; errors are socket errors plus non-2xx/3xx answers."""
    command = [
        "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(HERE / "wrk" / script), url
    ]  # fmt: skip
    env = {"TOKEN": token, "PAUSE_MS": str(pause_ms)}
    report = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", report)[1])  # type: ignore[index]
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", report, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", report))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return Load(rate, _ms(latency["50"]), _ms(latency["99"]), errors + (int(non_2xx[1]) if non_2xx else 0))


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


@contextmanager
def peak_rss(role: Role) -> Iterator[Callable[[], float]]:
    """Sample the resident memory of the role's workers; yields a reader of the largest one's peak (MB)."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], max((rss for rss in worker_rss(role)), default=0.0))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()


def worker_rss(role: Role) -> list[float]:
    """Resident memory (MB) of each granian worker process of ``role``."""
    if role.process is None:
        return []
    try:
        children = psutil.Process(role.process.pid).children(recursive=True)
        return [child.memory_info().rss / 2**20 for child in children]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Pipeline:
    offered_rate: float
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    processing_rate: float


async def pipeline_run(stack: Stack, rate: float, seconds: int) -> Pipeline:
    """Orders created at a steady rate (wrk: one connection per order a second, each pausing a second between
    its requests, so that a request's latency barely lowers the rate offered): the time from each create to
    its processed_at, and the rate at which they were processed."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        user_id, token = await sign_up(http)
    connections = int(rate)
    url, pause = f"{stack.base_url}/orders", 1000.0
    await asyncio.to_thread(wrk, url, "create_order_paced.lua", token, seconds, connections, pause_ms=pause)
    deadline = time.monotonic() + 300
    created = "SELECT count(*) FROM orders WHERE user_id = $1"
    processed = "SELECT count(*) FROM orders WHERE user_id = $1 AND processed_at IS NOT NULL"
    while (count := await stack.count(created, UUID(user_id))) > await stack.count(processed, UUID(user_id)):
        if time.monotonic() > deadline:
            raise SystemExit("orders were not all processed within 300 s")
        await asyncio.sleep(0.2)
    achieved = count / seconds
    rows = await stack.fetch(
        "SELECT created_at, processed_at FROM orders WHERE user_id = $1 ORDER BY created_at", UUID(user_id)
    )
    delays = sorted((row["processed_at"] - row["created_at"]).total_seconds() * 1000 for row in rows)
    last = max(row["processed_at"] for row in rows)
    span = (last - rows[0]["created_at"]).total_seconds()
    return Pipeline(
        offered_rate=rate,
        achieved_rate=achieved,
        p50_ms=statistics.median(delays),
        p99_ms=delays[int(len(delays) * 0.99) - 1],
        processing_rate=count / span,
    )


async def backlog_drain(stack: Stack, seconds: int, connections: int) -> tuple[int, float]:
    """Orders created by wrk while the consumer and worker are stopped, then processed as fast as they go:
    how many, and the rate at which the pipeline worked them off."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        _, token = await sign_up(http)
    stack.consumer.stop()
    stack.worker.stop()
    await asyncio.to_thread(wrk, f"{stack.base_url}/orders", "create_order.lua", token, seconds, connections)
    total = await stack.count("SELECT count(*) FROM orders")
    backlog = total - await stack.count(PROCESSED)
    stack.worker.start()
    stack.consumer.start()
    took = await stack.processed_at_least(total, within=900)
    return backlog, backlog / took


async def health_during_logins(stack: Stack, seconds: int) -> Load:
    """/health measured by wrk while 20 clients log in (Argon2 at production cost) without pause."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        email = f"bench-logins-{free_port()}@example.com"
        await http.post("/register", json={"email": email, "password": PASSWORD})
        stop = asyncio.Event()
        logins = [0]

        async def log_in_repeatedly() -> None:
            while not stop.is_set():
                response = await http.post("/token", data={"username": email, "password": PASSWORD})
                assert response.status_code == 200, response.text
                logins[0] += 1

        clients = [asyncio.create_task(log_in_repeatedly()) for _ in range(20)]
        await asyncio.sleep(1)
        load = await asyncio.to_thread(wrk, f"{stack.base_url}/health", "get.lua", "", seconds, 8)
        stop.set()
        await asyncio.gather(*clients)
    print(f"    {logins[0]} logins during the run")
    return load


async def drained(stack: Stack) -> None:
    total = await stack.count("SELECT count(*) FROM orders")
    await stack.processed_at_least(total, within=600)


async def seed(stack: Stack) -> tuple[str, str, str]:
    """A user with 25 orders: their id, a token and one order's id."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        user_id, token = await sign_up(http)
        headers = {"Authorization": f"Bearer {token}"}
        ids = [(await http.post("/orders", json=ORDER_BODY, headers=headers)).json()["id"] for _ in range(25)]
        assert (await http.get(f"/orders/{ids[0]}", headers=headers)).status_code == 200
    return user_id, token, ids[0]


def table(scenarios: list[Scenario]) -> list[str]:
    references = {s.key: s for s in scenarios if s.key.startswith("R")}
    lines = [
        "| | scenario | run | req/s | p50 ms | p99 ms | errors | × R1 | × R2 | API worker peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        for run, load in enumerate(scenario.runs):
            ratios = [
                load.requests_per_second / references[key].runs[run].requests_per_second
                for key in ("R1", "R2")
            ]
            rss = f"{load.peak_rss_mb:.0f}" if load.peak_rss_mb else "–"
            lines.append(
                f"| {scenario.key} | {scenario.title} | {run + 1} | {load.requests_per_second:,.0f} | "
                f"{load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.errors} | "
                f"{ratios[0]:.2f} | {ratios[1]:.2f} | {rss} |"
            )
    return lines


def write_results(lines: list[str]) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    RESULTS.write_text(before + BEGIN + "\n" + "\n".join(lines) + "\n" + END + after)


async def main(seconds: int, connections: int) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")
    stack = Stack(settings={"RATE_LIMIT": "1000000000/minute", "AUTH_RATE_LIMIT": "1000000000/minute"})
    bare_port, redis_port = free_port(), free_port()
    references = [
        Role(granian("bench.reference:bare", bare_port), stack.env, stack.logs / "bare.log"),
        Role(granian("bench.reference:one_redis_get", redis_port), stack.env, stack.logs / "redis.log"),
    ]
    try:
        await stack.set_up()
        stack.worker.start()
        stack.consumer.start()
        for reference, port in zip(references, (bare_port, redis_port), strict=True):
            reference.start()
            await wait_healthy(f"http://127.0.0.1:{port}/", reference.log)
        user_id, token, order_id = await seed(stack)
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
            _, creator_token = await sign_up(http)  # S2's orders don't grow the list S3 reads
        print(f"logs in {stack.logs}")
        api = stack.base_url
        scenarios = [
            Scenario("R1", "reference: bare route", f"http://127.0.0.1:{bare_port}/"),
            Scenario("R2", "reference: one Redis GET", f"http://127.0.0.1:{redis_port}/"),
            Scenario("S1", "GET /orders/{id} (cache hit)", f"{api}/orders/{order_id}", token=token),
            Scenario("S2", "POST /orders", f"{api}/orders", "create_order.lua", creator_token),
            Scenario(
                "S3", "GET /orders/user/{id}?limit=20", f"{api}/orders/user/{user_id}?limit=20", token=token
            ),
            Scenario("S4", "GET /health", f"{api}/health"),
        ]
        for run in range(2):
            for scenario in scenarios:
                print(f"run {run + 1}: {scenario.key} {scenario.title} ...", flush=True)
                wrk(scenario.url, scenario.script, scenario.token, 2, connections)  # warm up
                with peak_rss(stack.api) as peak:
                    load = await asyncio.to_thread(
                        wrk, scenario.url, scenario.script, scenario.token, seconds, connections
                    )
                if scenario.key.startswith("S"):
                    load.peak_rss_mb = peak()
                scenario.runs.append(load)
                print(f"    {load}")
                await drained(stack)  # the next scenario starts with the orders just created processed
        rss_after = worker_rss(stack.api)

        print("S5 pipeline ...", flush=True)
        pipelines = [await pipeline_run(stack, rate, seconds) for rate in (100, 200, 500)]
        print("S5 backlog ...", flush=True)
        backlog, drain_rate = await backlog_drain(stack, seconds, connections)
        print("health during logins ...", flush=True)
        health = await health_during_logins(stack, seconds)
    finally:
        for reference in references:
            reference.stop()
        await stack.tear_down()

    lines = [
        f"Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({psutil.cpu_count()} CPUs), "
        f"wrk -t2 -c{connections} -d{seconds}s on loopback; API: granian, 2 workers, production settings.",
        "",
        *table(scenarios),
        "",
        f"API worker RSS after the HTTP scenarios: {', '.join(f'{rss:.0f} MB' for rss in rss_after)}.",
        "",
        "| S5 pipeline | offered/s | achieved/s | create → processed p50 ms | p99 ms | processed/s |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {p.offered_rate:.0f}/s for {seconds} s | {p.offered_rate:.0f} | {p.achieved_rate:.0f} | "
            f"{p.p50_ms:.0f} | {p.p99_ms:.0f} | {p.processing_rate:.0f} |"
            for p in pipelines
        ),
        "",
        f"Backlog: {backlog} orders created while the consumer and worker were stopped were processed at "
        f"{drain_rate:.0f} orders/s once they started.",
        "",
        f"GET /health while 20 clients log in without pause: {health.requests_per_second:,.0f} req/s, "
        f"p50 {health.p50_ms:.2f} ms, p99 {health.p99_ms:.2f} ms, {health.errors} errors.",
    ]
    write_results(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.connections))
