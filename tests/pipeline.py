"""The consumer and the Celery worker as real processes, for the event pipeline tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from uuid import uuid4

from app.config import Settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
WORKER_PROCESSES = 2


def process_env(settings: Settings) -> dict[str, str]:
    """The environment a role process of ``settings``' deployment gets."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "REDIS_TIMEOUT_SECONDS": str(settings.redis_timeout_seconds),
        "AMQP_URL": settings.amqp_url,
        "EVENTS_EXCHANGE": settings.events_exchange,
        "CELERY_QUEUE": settings.celery_queue,
        "CONSUMER_METRICS_PORT": "0",  # any free port: the consumer logs the one it took
        "WORKER_CONCURRENCY": str(WORKER_PROCESSES),
        "LOG_FORMAT": "json",
    }


@dataclass
class Role:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    ready: str  # what the process logs once it is up
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _logged_before: int = 0

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self._logged_before = self._log.tell()
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until this run of the process (not an earlier one) logged that it is up."""
        ready = self.ready.encode()
        wait_for(
            lambda: ready in self.log_path.read_bytes()[self._logged_before :],
            f"the {self.name} to start",
            timeout,
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.process = None
        if self._log is not None:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self, **fields: str) -> list[dict[str, Any]]:
        """The process's JSON log lines that carry all of ``fields``."""
        found = []
        for text in self.log().splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue  # Celery's banner and other plain text
            if isinstance(line, dict) and all(line.get(key) == value for key, value in fields.items()):
                found.append(line)
        return found


@dataclass
class Pipeline:
    """The consumer and worker of one deployment; logs are kept in ``directory``."""

    settings: Settings
    directory: Path
    consumer: Role = field(init=False)
    worker: Role = field(init=False)

    def __post_init__(self) -> None:
        env = process_env(self.settings)
        self.consumer = Role(
            "consumer",
            [str(BIN / "python"), "-m", "app.consumer"],
            env,
            self.directory / "consumer.log",
            ready="consuming",
        )
        # A node name of its own: Celery's default, celery@<host>, is shared by every worker on this machine,
        # and RabbitMQ lets only one of them hold that name's control queue (the others die at start).
        node = f"{self.settings.celery_queue}@%h"
        self.worker = Role(
            "worker",
            [str(BIN / "celery"), "-A", "app.worker", "worker", "-n", node, "--loglevel", "INFO"],
            env,
            self.directory / "worker.log",
            ready="ready.",
        )

    def start(self) -> None:
        self.worker.start()
        self.consumer.start()
        try:
            self.consumer.wait_ready()
            self.worker.wait_ready()
        except AssertionError:
            self.stop()  # leave no process running behind a failed start
            raise

    def stop(self) -> None:
        self.consumer.stop()
        self.worker.stop()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()

    @contextmanager
    def instead(self, name: str, **env: str) -> Iterator[Role]:
        """Another process of the role ``name`` (consumer or worker), with ``env`` on top of the deployment's
        environment, running in place of the pipeline's own until the block ends."""
        own: Role = getattr(self, name)
        own.stop()
        other = replace(
            own, env={**own.env, **env}, log_path=self.directory / f"{name}-{uuid4().hex[:8]}.log"
        )
        try:
            other.start()
            other.wait_ready()
            yield other
        finally:
            other.stop()
            own.start()
            own.wait_ready()


def wait_for(condition: object, what: str, timeout: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
