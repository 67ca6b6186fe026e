"""SIGTERM to granian's main process (``python -m app.serve``) stops the API whenever it comes.

A rolling deploy stops an instance with SIGTERM at any moment: while it starts (before granian's handlers,
while the workers load the app and run its lifespan), while a crashed worker is respawned, idle, or busy with
orders. Each run below sends it at a random moment of one of those phases and checks that the instance
refuses new connections within 1 s and that its whole process tree is gone within the drain
(``SHUTDOWN_GRACE_SECONDS``).

The moments come from a seeded generator: ``SIGTERM_SEED=<the seed printed> uv run pytest
tests/integration/test_sigterm.py -s`` replays a run's moments (their effect still depends on the timing).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.serve import SHUTDOWN_GRACE_SECONDS
from tests.conftest import forget_redis_keys
from tests.support import (
    PASSWORD,
    ROOT,
    free_port,
    new_email,
    order_body,
    production_api_env,
    wait_until_healthy,
)

SEED = int(os.environ.get("SIGTERM_SEED") or secrets.randbelow(2**32))
# Most runs fall while workers start (at start-up, or respawned after a crash): workers that were loading the
# app when SIGTERM came are where it went missing.
PHASES = ["starting"] * 4 + ["spawning"] * 6 + ["respawning"] * 2 + ["idle"] * 4 + ["busy"] * 4
REFUSED_WITHIN = 1.0
BIN = Path(sys.executable).parent


@dataclass
class Moment:
    phase: str
    offset: float
    """Seconds after the phase's start: the launch, the first worker's spawn, the respawn of a worker killed
    once the instance was ready, or its readiness."""


@dataclass
class Figures:
    last_accepted: float | None = None
    """Seconds after SIGTERM of the last TCP connection the instance accepted (None: none accepted)."""
    gone: float | None = None
    """Seconds after SIGTERM when no process of the tree was left (None: one outlived the watch)."""
    outcomes: list[str] = field(default_factory=list)
    """What the requests of a busy instance got: status codes, or the transport error."""

    def holds(self) -> bool:
        refused = self.last_accepted is None or self.last_accepted < REFUSED_WITHIN
        return refused and self.gone is not None and self.gone <= SHUTDOWN_GRACE_SECONDS


class Instance:
    """``python -m app.serve`` in a session of its own, so that its process group is its whole tree."""

    def __init__(self, database_url: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.prefix = f"test-sigterm-{self.port}"
        self.lines: list[str] = []
        self.logged = threading.Condition()
        self.process = subprocess.Popen(
            [BIN / "python", "-m", "app.serve"],
            cwd=ROOT,
            env=self.environment(database_url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self.read_stderr, daemon=True)
        self.reader.start()

    def environment(self, database_url: str) -> dict[str, str]:
        return production_api_env(
            self.port,
            database_url,
            DATABASE_POOL_SIZE="5",
            REDIS_KEY_PREFIX=self.prefix,
            RATE_LIMIT="100000/minute",
            AUTH_RATE_LIMIT="1000/minute",
        )

    def read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self.logged:
                self.lines.append(raw.decode(errors="replace"))
                self.logged.notify_all()

    def line_with(self, text: str) -> str:
        """The first line logged that holds ``text``, once it is."""
        with self.logged:
            line = self.logged.wait_for(
                lambda: next((ln for ln in self.lines if text in ln), None), timeout=60
            )
        assert line, f"nothing logged {text!r}:\n{self.output()}"
        return line

    def output(self) -> str:
        return "".join(self.lines)

    def tree(self) -> list[int]:
        """The processes of the instance's group still running (zombies excepted: they have exited)."""
        self.process.poll()  # reap the main process once it has exited
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == self.process.pid and fields[0] != "Z":
                alive.append(int(stat.parent.name))
        return alive

    def accepts(self) -> bool:
        """Whether a new TCP connection to the public port is accepted."""
        with socket.socket() as probe:
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", self.port))
            except OSError:
                return False
            return True

    def stop(self) -> None:
        """Kill whatever is left (a failed run), and forget the instance's Redis keys."""
        if self.tree():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        forget_redis_keys(self.prefix)


def moments(rng: random.Random) -> list[Moment]:
    """One moment a phase in ``PHASES``, in a random order."""
    offsets = {
        "starting": (0.0, 1.6),
        "spawning": (0.0, 0.8),
        "respawning": (0.0, 0.8),
        "idle": (0.0, 0.3),
        "busy": (0.05, 0.4),
    }
    phases = rng.sample(PHASES, k=len(PHASES))
    return [Moment(phase, round(rng.uniform(*offsets[phase]), 3)) for phase in phases]


def sign_up(base_url: str) -> dict[str, str]:
    email = new_email()
    with httpx.Client(base_url=base_url, timeout=10) as http:
        assert http.post("/register", json={"email": email, "password": PASSWORD}).status_code == 201
        tokens = http.post("/token", data={"username": email, "password": PASSWORD}).json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def place_orders(base_url: str, headers: dict[str, str], stop: threading.Event, outcomes: list[str]) -> None:
    """Orders, each on a new connection, until ``stop``: some are in flight whenever SIGTERM comes."""
    while not stop.is_set():
        try:
            with httpx.Client(base_url=base_url, timeout=SHUTDOWN_GRACE_SECONDS) as http:
                outcomes.append(
                    str(http.post("/orders", json=order_body("2.00"), headers=headers).status_code)
                )
        except httpx.TransportError as exc:
            outcomes.append(type(exc).__name__)
            time.sleep(0.02)  # refused: the instance is stopping


@contextmanager
def busy(instance: Instance, outcomes: list[str]) -> Iterator[None]:
    """Three clients placing orders on ``instance`` while the block runs, and until its tree is gone."""
    headers = sign_up(instance.base_url)
    stop = threading.Event()
    clients = [
        threading.Thread(target=place_orders, args=(instance.base_url, headers, stop, outcomes))
        for _ in range(3)
    ]
    for client in clients:
        client.start()
    try:
        yield
    finally:
        stop.set()
        for client in clients:
            client.join()


def reach(instance: Instance, phase: str) -> None:
    """Wait for the start of ``phase`` (the launch is the start of "starting")."""
    if phase == "spawning":
        instance.line_with("Spawning worker-1 ")
    elif phase in {"respawning", "idle", "busy"}:
        wait_until_healthy(instance.base_url, instance.process, instance.output)
    if phase == "respawning":  # a crash: granian forks a new worker-1 (respawn_failed_workers)
        spawned = json.loads(instance.line_with("Spawning worker-1 "))["event"]
        os.kill(int(spawned.rpartition(" ")[2]), signal.SIGKILL)
        instance.line_with("Respawning worker-1")


def watch(instance: Instance, figures: Figures) -> None:
    """SIGTERM to the main process, then probe the port until the tree is gone (or well past the drain)."""
    instance.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    while (elapsed := time.monotonic() - sent) < SHUTDOWN_GRACE_SECONDS + 5:
        if not instance.tree():
            figures.gone = elapsed
            return
        if instance.accepts():
            figures.last_accepted = time.monotonic() - sent
        time.sleep(0.02)


def run(database_url: str, moment: Moment) -> tuple[Figures, str]:
    """One instance stopped at ``moment``: the figures, and the instance's log."""
    figures = Figures()
    instance = Instance(database_url)
    try:
        reach(instance, moment.phase)
        with busy(instance, figures.outcomes) if moment.phase == "busy" else nullcontext():
            time.sleep(moment.offset)
            watch(instance, figures)
    finally:
        instance.stop()
    return figures, instance.output()


def describe(number: int, moment: Moment, figures: Figures) -> str:
    accepted = "none" if figures.last_accepted is None else f"{figures.last_accepted:.2f} s"
    gone = "not gone" if figures.gone is None else f"{figures.gone:.2f} s"
    line = f"run {number:2d}: {moment.phase:10s} +{moment.offset:.3f} s  last accepted {accepted:7s}"
    line += f"  gone {gone}"
    if figures.outcomes:
        line += "  orders: " + ", ".join(f"{what} x{n}" for what, n in Counter(figures.outcomes).items())
    return line


def test_sigterm_stops_the_api_at_any_moment(database_url: str) -> None:
    print(f"\nSIGTERM_SEED={SEED}")
    results: list[tuple[Moment, Figures]] = []
    rng = random.Random(SEED)  # noqa: S311 - chooses moments, no secret
    for number, moment in enumerate(moments(rng), start=1):
        figures, output = run(database_url, moment)
        results.append((moment, figures))
        print(describe(number, moment, figures), flush=True)
        assert figures.holds(), f"SIGTERM_SEED={SEED} {describe(number, moment, figures)}\n{output}"
    worst_accepted = max((f.last_accepted or 0.0 for _, f in results), default=0.0)
    worst_gone = max((f.gone or 0.0 for _, f in results), default=0.0)
    print(f"SIGTERM_SEED={SEED}: worst last accepted {worst_accepted:.2f} s, worst gone {worst_gone:.2f} s")
