"""A worker pool process starts tracing after Celery forked it, and stops it before it exits; with tracing
off, the worker's code loads nothing of OpenTelemetry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/orders",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
    "JWT_SECRET": "a-production-like-secret-of-more-than-32-characters",
}
# What a pool process goes through: the worker's app loaded (in the parent, before the fork), then Celery's
# signals at the process's start and at its end.
POOL_PROCESS = """
import json, sys
from celery.signals import worker_process_init, worker_process_shutdown
from celery.app.utils import find_app
from app.lib.tracing import tracing_started
find_app("app.worker").loader.import_default_modules()
def loaded():  # the tracing SDK and instrumentations (redis-py imports OpenTelemetry's API on its own)
    tracing = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation")
    return sorted(name for name in sys.modules if name.startswith(tracing))
before = loaded()
worker_process_init.send(sender=None)
started = tracing_started()
worker_process_shutdown.send(sender=None, pid=0, exitcode=0)
print(json.dumps({
    "before": before,
    "started": started,
    "stopped": not tracing_started(),
    "loaded": loaded(),
}))
"""


def pool_process(**environ: str) -> dict[str, Any]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **PRODUCTION, **environ}
    done = subprocess.run(
        [sys.executable, "-c", POOL_PROCESS], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "none"}], ids=["unset", "none"])
def test_with_tracing_off_a_pool_process_sets_up_no_tracing(environ: dict[str, str]) -> None:
    report = pool_process(**environ)

    assert not report["started"]
    assert report["loaded"] == []


def test_with_tracing_on_a_pool_process_traces_its_tasks_from_its_start_to_its_end() -> None:
    report = pool_process(OTEL_TRACES_EXPORTER="console")

    # No tracing in the parent, before the fork: the span processor's export thread would not survive it.
    assert "opentelemetry.sdk.trace" not in report["before"]
    assert report["started"]
    assert "opentelemetry.instrumentation.celery" in report["loaded"]  # the task span continues the dispatch
    assert report["stopped"]  # its spans exported before the process exits
