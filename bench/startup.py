"""How long `uv run just dev` takes to answer: from the command to the first 200 of ``GET /health``.

Each run starts the README's command as a newcomer types it, in its own process group, on a free ``PORT``
with its database in a temporary directory (``DATABASE_URL`` to a fresh SQLite file, so every run migrates
from nothing, as a first ``just dev`` does), polls ``/health`` every 10 ms, and kills the whole group.

    uv run python bench/startup.py                 # embedded default, 5 warm runs
    uv run python bench/startup.py --runs 9 --services   # .env.example's services, a database of its own
    uv run python bench/startup.py --bytecode none --first 3

Bytecode decides most of it, so the runs are given their own (``PYTHONPYCACHEPREFIX``), whatever the .venv
holds. ``--bytecode cache`` (the default): a cache the runs share, filled by a first run that is not counted,
as where Python writes ``.pyc`` files. ``none``: the standard library's bytecode only, and
``PYTHONDONTWRITEBYTECODE`` set, so that every process compiles every other module it imports, every time
(a .venv installed without bytecode, on a machine that writes none). ``env``: the caller's environment as it
is. ``--first`` adds runs with an empty cache each (written as they go): what the first ``just dev`` after
``uv sync`` pays, the standard library compiled too; the page cache stays warm, so "first" is not a cold
disk. ``--against OTHER_CHECKOUT`` runs `just dev` there too, taking turns, to compare two versions.
Then the parts: the app's import (``python -X importtime``, its top modules) and ``alembic upgrade head``
on a database already at head, each a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
from stack import ROOT, Stack, free_port

TIMEOUT_SECONDS = 120
EMBEDDED_ONLY = ("DATABASE_URL", "REDIS_URL", "AMQP_URL", "CELERY_BROKER_URL", "APP_ENV")


def embedded_env(directory: Path) -> dict[str, str]:
    """The caller's environment without the service settings, the database in ``directory``."""
    env = {name: value for name, value in os.environ.items() if name not in EMBEDDED_ONLY}
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{directory / 'orders.db'}"
    return env


def services_env(stack: Stack) -> dict[str, str]:
    """``.env.example`` as ``cp .env.example .env`` gives it, on names of the stack's own."""
    env = dict(os.environ)
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            env[name.strip()] = value.strip()
    env.update(
        DATABASE_URL=stack.env["DATABASE_URL"],
        REDIS_KEY_PREFIX=stack.env["REDIS_KEY_PREFIX"],
        EVENTS_EXCHANGE=stack.exchange,
        CELERY_QUEUE=stack.queue,
    )
    return env


def time_to_health(env: dict[str, str], log: Path, root: Path = ROOT) -> float:
    """Seconds from `uv run just dev` to its first 200 on /health; the process group is killed after."""
    port = free_port()
    env = {**env, "PORT": str(port)}
    url = f"http://127.0.0.1:{port}/health"
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            ["uv", "run", "just", "dev"],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return _poll(url, process, started, log)
        finally:
            _kill_group(process)


def _poll(url: str, process: subprocess.Popen[bytes], started: float, log: Path) -> float:
    with httpx.Client(timeout=1) as http:
        while time.perf_counter() - started < TIMEOUT_SECONDS:
            if process.poll() is not None:
                raise SystemExit(f"just dev exited with {process.returncode}; see {log}")
            try:
                if http.get(url).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise SystemExit(f"{url} did not answer within {TIMEOUT_SECONDS} s; see {log}")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group (just, granian and its worker), then SIGKILL to whatever of it lingers."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    # The group outlives its leader while a child still runs: make sure nothing stays bound to the port.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def environment(services: bool) -> Iterator[dict[str, str]]:
    """The environment of one run, with a database nobody else uses, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="orders-startup-") as directory:
        if not services:
            yield embedded_env(Path(directory))
            return
        stack = Stack()
        asyncio.run(_create_database(stack))
        try:
            yield services_env(stack)
        finally:
            asyncio.run(stack.tear_down())


async def _create_database(stack: Stack) -> None:
    from stack import admin  # noqa: PLC0415 - services only

    await admin(f'CREATE DATABASE "{stack.database}"')


@dataclass(frozen=True)
class Bytecode:
    """The runs' bytecode cache: ``prefix`` None leaves the caller's environment as it is; ``fresh``, a new
    empty cache for each run."""

    prefix: Path | None
    write: bool = True
    fresh: bool = False

    def apply(self, env: dict[str, str], fresh: Path) -> None:
        if self.prefix is None:
            return
        env["PYTHONPYCACHEPREFIX"] = str(fresh if self.fresh else self.prefix)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if not self.write:
            env["PYTHONDONTWRITEBYTECODE"] = "1"


def runs(count: int, services: bool, bytecode: Bytecode, logs: Path, roots: list[Path]) -> list[list[float]]:
    """``count`` runs in each checkout of ``roots``, taking turns (a busy machine slows them alike)."""
    times: list[list[float]] = [[] for _ in roots]
    for run in range(count):
        for root, taken in zip(roots, times, strict=True):
            with environment(services) as env, tempfile.TemporaryDirectory(prefix="orders-pyc-") as fresh:
                bytecode.apply(env, Path(fresh))
                taken.append(time_to_health(env, logs / f"dev-{len(roots)}-{run}.log", root))
            print(f"  run {run + 1} in {root}: {taken[-1]:.2f} s", flush=True)
    return times


def compiled_stdlib(directory: Path) -> Path:
    """A bytecode cache holding the standard library alone, as an installed Python has it."""
    stdlib = sysconfig.get_paths()["stdlib"]
    skipped = r"/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)/"
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(directory)}
    command = [sys.executable, "-m", "compileall", "-q", "-j", "0", "-x", skipped, stdlib]
    subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL)
    return directory


def import_profile(top: int, bytecode: Bytecode) -> None:
    """``python -X importtime -c 'import app.asgi'``: the wall time, and the modules costing most."""
    with tempfile.TemporaryDirectory(prefix="orders-startup-") as directory:
        env = embedded_env(Path(directory))
        bytecode.apply(env, Path(directory))
        command = [sys.executable, "-X", "importtime", "-c", "import app.asgi"]
        for _ in range(2):  # the first fills the bytecode cache, if there is one
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - started
    rows = []
    by_package: Counter[str] = Counter()  # each module's own time, whoever imported it first
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((int(match[2]), len(match[3]) // 2, match[4]))
            by_package[match[4].split(".")[0]] += int(match[1])
    print(f"import app.asgi (and the app built): {wall:.2f} s wall, {len(rows)} modules")
    for cumulative, depth, name in sorted(rows, reverse=True)[:top]:
        print(f"  {cumulative / 1e6:6.2f} s  {'  ' * min(depth, 6)}{name}")
    print("by package, the modules' own time:")
    for package, own in by_package.most_common(top):
        print(f"  {own / 1e6:6.2f} s  {package}")


def migrate_at_head(bytecode: Bytecode) -> None:
    """`alembic upgrade head` (what `just migrate` runs) on a database already at head."""
    with tempfile.TemporaryDirectory(prefix="orders-startup-") as directory:
        env = embedded_env(Path(directory))
        bytecode.apply(env, Path(directory))
        command = [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"]
        subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True)
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True)
        print(f"alembic upgrade head, already at head: {time.perf_counter() - started:.2f} s")


def report(label: str, times: list[float]) -> None:
    print(
        f"{label}: median {statistics.median(times):.2f} s, min {min(times):.2f}, max {max(times):.2f} "
        f"({len(times)} runs)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="warm runs (5)")
    parser.add_argument("--services", action="store_true", help=".env.example's services, not embedded")
    parser.add_argument("--bytecode", choices=("cache", "none", "env"), default="cache", help="(cache)")
    parser.add_argument("--first", type=int, nargs="?", const=3, default=0, help="runs, empty cache (3)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to run `just dev` in (this)")
    parser.add_argument("--against", type=Path, help="another checkout, its runs taking turns with --root's")
    parser.add_argument(
        "--top", type=int, default=25, help="modules listed by import time (25; 0: no import profile)"
    )
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="orders-startup-logs-"))
    roots = [args.root, *([args.against] if args.against else [])]
    bytecode = {
        "cache": lambda: Bytecode(logs / "pycache"),
        "none": lambda: Bytecode(compiled_stdlib(logs / "stdlib"), write=False),
        "env": lambda: Bytecode(None),
    }[args.bytecode]()
    mode = "services (.env.example)" if args.services else "embedded default"
    print(f"uv run just dev → GET /health 200, {mode}, bytecode: {args.bytecode}; logs in {logs}", flush=True)
    if args.runs:
        runs(1, args.services, bytecode, logs, roots)  # warms the page cache (and the bytecode cache)
        for root, times in zip(roots, runs(args.runs, args.services, bytecode, logs, roots), strict=True):
            report(f"warm, {root}", times)
    if args.first:
        first = runs(args.first, args.services, Bytecode(logs, fresh=True), logs, roots)
        for root, times in zip(roots, first, strict=True):
            report(f"first (empty bytecode cache), {root}", times)
    if args.top:
        import_profile(args.top, bytecode)
        migrate_at_head(bytecode)


if __name__ == "__main__":
    main()
