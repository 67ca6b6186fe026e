"""The benchmark: ``just bench`` (``uv run python bench/run.py``).

Starts the service as production runs it (see stack.py) and four reference servers on granian with two
workers (see reference.py), loads them with wrk from a separate process on loopback, and writes the results
between the markers of bench/RESULTS.md. Every HTTP scenario runs twice; ratios to the references are
computed within the same run, because this machine's absolute figures drift from one minute to the next.
Over the pipeline runs it also measures the CPU time every process of the pipeline spends per order.
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
from typing import Any
from uuid import UUID

import httpx
import psutil
from stack import PASSWORD, PROCESSED, Role, Stack, free_port, granian, sign_up, wait_healthy

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ORDER_BODY = {"items": [{"name": "Espresso beans", "quantity": 2, "price": "12.50"}]}
REFERENCES = {
    "R1": ("reference: bare route", "bare"),
    "R2": ("reference: one Redis GET", "one_redis_get"),
    "R3": ("reference: irreducible create", "irreducible_create"),
    "R4": ("reference: irreducible page of 20", "irreducible_page"),
}
"""Each reference's title, and its app in bench/reference.py."""
FLOOR = {"S1": "R2", "S2": "R3", "S3": "R4"}
"""The reference each scenario's target is stated against: the same work with nothing else."""
DEPTH = 5_000
"""How deep S6 and S7 page, the same page of 20 by cursor and by offset."""
INSERT_ORDERS = """
INSERT INTO orders (id, user_id, items, total_price, status, version, created_at, updated_at, processed_at)
SELECT gen_random_uuid(), $1, '[{"name": "Espresso beans", "quantity": 2, "price": "12.50"}]', 25.00,
       'PENDING', 1, now() - n * interval '1 millisecond', now() - n * interval '1 millisecond', now()
FROM generate_series(1, $2) AS n
"""
"""``$2`` processed orders of the user ``$1``, a millisecond apart: written in one statement, where the API
would take a request each."""


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
    rate = float(_search(r"Requests/sec:\s+([\d.]+)", report)[1])
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", report, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", report))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return Load(rate, _ms(latency["50"]), _ms(latency["99"]), errors + (int(non_2xx[1]) if non_2xx else 0))


def _search(pattern: str, text: str) -> re.Match[str]:
    """The pattern's first match in text that always holds it (wrk's report): a clear error if it does not."""
    if (match := re.search(pattern, text)) is None:
        raise ValueError(f"no {pattern!r} in {text!r}")
    return match


def _ms(value: str) -> float:
    number, unit = _search(r"^([\d.]+)(\w+)", value).groups()
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


ROLES = ("api", "consumer", "worker", "postgresql", "rabbitmq", "redis")
LOAD_GENERATOR = ("wrk", "bench")
NAMED_ROLES = {"postgres": "postgresql", "beam.smp": "rabbitmq", "epmd": "rabbitmq", "redis-server": "redis"}
"""The services' processes by name (all of the machine's), with their children (RabbitMQ's erl_child_setup,
inet_gethost)."""


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's processes, and by the load generator.

    A process counts with the CPU of the children it has waited for (psutil's children_user and
    children_system). Every process that comes and goes during a run is the child of one of its role that
    stays and waits for it: PostgreSQL's backends of the postmaster, Celery's prefork children of the
    worker's main process, granian's workers of the API's, RabbitMQ's helpers of erl_child_setup. So a
    process's CPU is in the sum while it runs and in its parent's once it has exited: two samples per run
    count short-lived processes in full, and nothing twice. Not counted: a process that exits during a run
    and is waited for outside its role (a role's main process, which no run stops; an orphan, by init); the
    kernel's work outside processes (interrupts, loopback traffic in softirqs). The load generator: this
    process, and wrk, its child, counted once waited for (a measured run includes the whole of its wrk run).
    """
    processes = {p.pid: p.info for p in psutil.process_iter(["name", "ppid", "cpu_times"])}
    roots = {role.process.pid: name for name, role in role_processes(stack) if role.process}
    used = dict.fromkeys(ROLES, 0.0)
    for pid, info in processes.items():
        role, times = role_of(pid, processes, roots), info["cpu_times"]
        if role is not None and times is not None:  # None: the process was gone before it was read
            used[role] += times.user + times.system + times.children_user + times.children_system
    me = psutil.Process().cpu_times()
    return {**used, "wrk": me.children_user + me.children_system, "bench": me.user + me.system}


def role_processes(stack: Stack) -> list[tuple[str, Role]]:
    return [("api", stack.api), ("consumer", stack.consumer), ("worker", stack.worker)]


def role_of(pid: int, processes: dict[int, dict[str, Any]], roots: dict[int, str]) -> str | None:
    """The role of the process's nearest ancestor (or itself) that is a role's main process or a service."""
    while pid > 0 and pid in processes:
        role = roots.get(pid) or NAMED_ROLES.get(processes[pid]["name"])
        if role is not None:
            return role
        pid = processes[pid]["ppid"]
    return None


@dataclass
class CpuUse:
    """The CPU seconds of each role and of the load generator over one run, and the orders of the run."""

    run: str
    orders: int
    seconds: dict[str, float]


def cpu_use(run: str, orders: int, before: dict[str, float], after: dict[str, float]) -> CpuUse:
    return CpuUse(run, orders, {key: after[key] - before[key] for key in after})


@dataclass
class Pipeline:
    offered_rate: float
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    processing_rate: float
    cpu: CpuUse


async def pipeline_run(stack: Stack, rate: float, seconds: int) -> Pipeline:
    """Orders created at a steady rate (wrk: one connection per order a second, each pausing a second between
    its requests, so that a request's latency barely lowers the rate offered): the time from each create to
    its processed_at, the rate at which they were processed, and the machine's CPU until the last was."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        user_id, token = await sign_up(http)
    url, pause = f"{stack.base_url}/orders", 1000.0
    before = cpu_seconds(stack)
    await asyncio.to_thread(wrk, url, "create_order_paced.lua", token, seconds, int(rate), pause_ms=pause)
    count = await all_processed(stack, UUID(user_id))
    cpu = cpu_use(f"S5 {rate:.0f}/s for {seconds} s", count, before, cpu_seconds(stack))
    rows = await stack.fetch(
        "SELECT created_at, processed_at FROM orders WHERE user_id = $1 ORDER BY created_at", UUID(user_id)
    )
    delays = sorted((row["processed_at"] - row["created_at"]).total_seconds() * 1000 for row in rows)
    last = max(row["processed_at"] for row in rows)
    span = (last - rows[0]["created_at"]).total_seconds()
    return Pipeline(
        offered_rate=rate,
        achieved_rate=count / seconds,
        p50_ms=statistics.median(delays),
        p99_ms=delays[int(len(delays) * 0.99) - 1],
        processing_rate=count / span,
        cpu=cpu,
    )


async def all_processed(stack: Stack, user_id: UUID) -> int:
    """Wait until every order of the user is processed; how many there are."""
    deadline = time.monotonic() + 300
    created = "SELECT count(*) FROM orders WHERE user_id = $1"
    processed = "SELECT count(*) FROM orders WHERE user_id = $1 AND processed_at IS NOT NULL"
    while (count := await stack.count(created, user_id)) > await stack.count(processed, user_id):
        if time.monotonic() > deadline:
            raise SystemExit("orders were not all processed within 300 s")
        await asyncio.sleep(0.2)
    return count


@dataclass
class Backlog:
    orders: int
    drain_rate: float  # from the moment both roles are up: the worker ready, the consumer consuming
    start_up_seconds: float  # from the worker's start to the consumer's first consumption
    create: CpuUse
    drain: CpuUse
    start_up: dict[str, float]


async def backlog_drain(stack: Stack, seconds: int, connections: int) -> Backlog:
    """Orders created by wrk while the consumer and worker are stopped, then processed as fast as they go:
    how many, the rate at which the pipeline worked them off once both roles were up, and the CPU of each
    phase, the drain's less that of the roles' start-up (measured apart: seconds of CPU, which the first
    orders processed can't be told from)."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        _, token = await sign_up(http)
    stack.consumer.stop()
    stack.worker.stop()
    before = cpu_seconds(stack)  # after the stops: the roles' main processes are waited for by this one
    await asyncio.to_thread(wrk, f"{stack.base_url}/orders", "create_order.lua", token, seconds, connections)
    total = await stack.count("SELECT count(*) FROM orders")
    backlog = total - await stack.count(PROCESSED)
    created = cpu_seconds(stack)
    started = time.monotonic()
    stack.worker.start()
    await stack.worker.logged(" ready.")  # Celery's "<node> ready.", once it takes tasks
    stack.consumer.start()
    await stack.consumer.logged('"consuming"')
    consuming = time.monotonic()
    took = await stack.processed_at_least(total, within=900, every=0.01)
    drain = cpu_use("backlog: drain", backlog, created, cpu_seconds(stack))
    start_up = await start_up_cpu(stack)
    for role in ROLES:
        drain.seconds[role] -= start_up[role]
    return Backlog(
        orders=backlog,
        drain_rate=backlog / took,
        start_up_seconds=consuming - started,
        create=cpu_use("backlog: create", backlog, before, created),
        drain=drain,
        start_up=start_up,
    )


async def start_up_cpu(stack: Stack) -> dict[str, float]:
    """Each role's CPU seconds while the consumer and worker start with nothing to do: from their start until
    they have used under 10 ms in each of four half-seconds (Celery's start waits a second for its peers)."""
    stack.consumer.stop()
    stack.worker.stop()
    before = last = cpu_seconds(stack)
    stack.worker.start()
    stack.consumer.start()
    quiet, deadline = 0, time.monotonic() + 120
    while quiet < 4:
        if time.monotonic() > deadline:
            raise SystemExit("the consumer and worker were still busy 120 s after their start")
        await asyncio.sleep(0.5)
        now = cpu_seconds(stack)
        quiet = quiet + 1 if sum(now[role] - last[role] for role in ("consumer", "worker")) < 0.01 else 0
        last = now
    return {role: last[role] - before[role] for role in ROLES}


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


async def seed_deep(stack: Stack) -> tuple[str, str]:
    """A user with ``DEPTH`` + 100 orders: a token, and the cursor of the page ``DEPTH`` orders deep."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        user_id, token = await sign_up(http)
        await insert_orders(stack, UUID(user_id), DEPTH + 100)
        headers = {"Authorization": f"Bearer {token}"}
        before = await http.get("/orders", params={"limit": 20, "offset": DEPTH - 20}, headers=headers)
    return token, before.headers["X-Next-Cursor"]


async def insert_orders(stack: Stack, user_id: UUID, count: int) -> None:
    await stack.fetch(INSERT_ORDERS, user_id, count)
    await stack.fetch("VACUUM ANALYZE orders")  # as autovacuum leaves it: statistics, the visibility map


def reference_servers(stack: Stack) -> dict[str, tuple[Role, str]]:
    """The reference servers, not started yet: each one's role and URL."""
    servers = {}
    for key, (_, app) in REFERENCES.items():
        port = free_port()
        servers[key] = (
            Role(granian(f"bench.reference:{app}", port), stack.env, stack.logs / f"{app}.log"),
            f"http://127.0.0.1:{port}/",
        )
    return servers


async def start_references(servers: dict[str, tuple[Role, str]]) -> None:
    for role, url in servers.values():
        role.start()
        # R4 reads the page of the user in the query, one without orders until the seeded user exists.
        await wait_healthy(f"{url}?user_id={UUID(int=0)}", role.log)


def scenarios_of(
    servers: dict[str, tuple[Role, str]],
    api: str,
    seeded: tuple[str, str, str],
    creator_token: str,
    deep: tuple[str, str],
) -> list[Scenario]:
    user_id, token, order_id = seeded
    deep_token, cursor = deep
    url = {key: url for key, (_, url) in servers.items()}
    return [
        Scenario("R1", REFERENCES["R1"][0], url["R1"]),
        Scenario("R2", REFERENCES["R2"][0], url["R2"]),
        Scenario("R3", REFERENCES["R3"][0], url["R3"], "create_order.lua"),
        Scenario("R4", REFERENCES["R4"][0], f"{url['R4']}?user_id={user_id}"),
        Scenario("S1", "GET /orders/{id} (cache hit)", f"{api}/orders/{order_id}", token=token),
        Scenario("S2", "POST /orders", f"{api}/orders", "create_order.lua", creator_token),
        Scenario(
            "S3", "GET /orders/user/{id}?limit=20", f"{api}/orders/user/{user_id}?limit=20", token=token
        ),
        Scenario("S4", "GET /health", f"{api}/health"),
        Scenario(
            "S6",
            f"GET /orders?limit=20, {DEPTH:,} deep by cursor",
            f"{api}/orders?limit=20&cursor={cursor}",
            token=deep_token,
        ),
        Scenario(
            "S7",
            f"GET /orders?limit=20, {DEPTH:,} deep by offset",
            f"{api}/orders?limit=20&offset={DEPTH}",
            token=deep_token,
        ),
    ]


async def http_runs(stack: Stack, scenarios: list[Scenario], seconds: int, connections: int) -> None:
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


def table(scenarios: list[Scenario]) -> list[str]:
    references = {s.key: s for s in scenarios if s.key.startswith("R")}
    lines = [
        "| | scenario | run | req/s | p50 ms | p99 ms | errors | × R1 | × R2 | × its floor | "
        "API worker peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        for run, load in enumerate(scenario.runs):
            ratio = {
                key: load.requests_per_second / reference.runs[run].requests_per_second
                for key, reference in references.items()
            }
            floor = FLOOR.get(scenario.key)
            against_floor = f"{ratio[floor]:.2f} × {floor}" if floor else "–"
            rss = f"{load.peak_rss_mb:.0f}" if load.peak_rss_mb else "–"
            lines.append(
                f"| {scenario.key} | {scenario.title} | {run + 1} | {load.requests_per_second:,.0f} | "
                f"{load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.errors} | "
                f"{ratio['R1']:.2f} | {ratio['R2']:.2f} | {against_floor} | {rss} |"
            )
    return lines


def pipeline_lines(pipelines: list[Pipeline], backlog: Backlog, r3: float, seconds: int) -> list[str]:
    """S5 and the backlog, their processing rates against R3's creates (the mean of its two runs)."""
    return [
        "| S5 pipeline | offered/s | achieved/s | create → processed p50 ms | p99 ms | processed/s | × R3 |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {p.offered_rate:.0f}/s for {seconds} s | {p.offered_rate:.0f} | {p.achieved_rate:.0f} | "
            f"{p.p50_ms:.0f} | {p.p99_ms:.0f} | {p.processing_rate:.0f} | {p.processing_rate / r3:.2f} |"
            for p in pipelines
        ),
        "",
        f"Backlog: {backlog.orders} orders created while the consumer and worker were stopped were processed "
        f"at {backlog.drain_rate:.0f} orders/s ({backlog.drain_rate / r3:.2f} × R3) once both were up (the "
        f"worker ready, then the consumer consuming: {backlog.start_up_seconds:.1f} s after their start).",
    ]


def start_up_line(start_up: dict[str, float]) -> str:
    roles = ", ".join(f"{role} {seconds:.2f} s" for role, seconds in start_up.items() if seconds >= 0.005)
    return (
        f"The consumer's and worker's start-up, measured apart with nothing to process and left out of the "
        f"drain: {sum(start_up.values()):.2f} s of CPU ({roles})."
    )


def cpu_table(uses: list[CpuUse]) -> list[str]:
    """Milliseconds of CPU per order, in all and by role; the load generator's apart, not in the total."""
    lines = [
        "Machine CPU per order, ms (user + system of every process of each role; PostgreSQL, RabbitMQ and "
        "Redis: all of the machine's; wrk and this script, the load generator, not in the total):",
        "",
        f"| run | orders | total ms/order | {' | '.join(ROLES)} | {' | '.join(LOAD_GENERATOR)} |",
        "|---|---:|---:|" + "---:|" * (len(ROLES) + len(LOAD_GENERATOR)),
    ]
    for use in uses:
        per_order = {key: seconds * 1000 / max(use.orders, 1) for key, seconds in use.seconds.items()}
        cells = " | ".join(f"{per_order[key]:.2f}" for key in (*ROLES, *LOAD_GENERATOR))
        total = sum(per_order[role] for role in ROLES)
        lines.append(f"| {use.run} | {use.orders} | {total:.2f} | {cells} |")
    return lines


def write_results(lines: list[str]) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    RESULTS.write_text(before + BEGIN + "\n" + "\n".join(lines) + "\n" + END + after)


def floor_rate(scenarios: list[Scenario], key: str) -> float:
    """The mean rate of a reference's runs."""
    [rate] = (statistics.mean(load.requests_per_second for load in s.runs) for s in scenarios if s.key == key)
    return rate


def report(
    scenarios: list[Scenario],
    rss_after: list[float],
    pipelines: list[Pipeline],
    backlog: Backlog,
    health: Load,
    *,
    seconds: int,
    connections: int,
) -> list[str]:
    r3 = floor_rate(scenarios, "R3")
    return [
        f"Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({psutil.cpu_count()} CPUs), "
        f"wrk -t2 -c{connections} -d{seconds}s on loopback; API: granian, 2 workers, production settings.",
        "",
        *table(scenarios),
        "",
        f"API worker RSS after the HTTP scenarios: {', '.join(f'{rss:.0f} MB' for rss in rss_after)}.",
        "",
        *pipeline_lines(pipelines, backlog, r3, seconds),
        "",
        *cpu_table([*(p.cpu for p in pipelines), backlog.create, backlog.drain]),
        "",
        start_up_line(backlog.start_up),
        "",
        f"GET /health while 20 clients log in without pause: {health.requests_per_second:,.0f} req/s, "
        f"p50 {health.p50_ms:.2f} ms, p99 {health.p99_ms:.2f} ms, {health.errors} errors.",
    ]


async def main(seconds: int, connections: int) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")
    stack = Stack(settings={"RATE_LIMIT": "1000000000/minute", "AUTH_RATE_LIMIT": "1000000000/minute"})
    servers = reference_servers(stack)
    try:
        await stack.set_up()
        stack.worker.start()
        stack.consumer.start()
        await start_references(servers)
        seeded = await seed(stack)
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
            _, creator_token = await sign_up(http)  # S2's orders don't grow the list S3 reads
        print(f"logs in {stack.logs}")
        deep = await seed_deep(stack)
        scenarios = scenarios_of(servers, stack.base_url, seeded, creator_token, deep)
        await http_runs(stack, scenarios, seconds, connections)
        rss_after = worker_rss(stack.api)
        print("S5 pipeline ...", flush=True)
        r3 = floor_rate(scenarios, "R3")
        # The targets' rates: half of 0.8 R3 (p99 from create to processed), and 0.8 R3 itself.
        rates = (100, round(0.4 * r3, -1), round(0.8 * r3, -1))
        pipelines = [await pipeline_run(stack, rate, seconds) for rate in rates]
        print("S5 backlog ...", flush=True)
        backlog = await backlog_drain(stack, seconds, connections)
        print("health during logins ...", flush=True)
        health = await health_during_logins(stack, seconds)
    finally:
        for role, _ in servers.values():
            role.stop()
        await stack.tear_down()
    lines = report(scenarios, rss_after, pipelines, backlog, health, seconds=seconds, connections=connections)
    write_results(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.connections))
