"""A worker pool process starts tracing after Celery forked it, and stops it before it exits; with tracing
off, the worker's code loads nothing of OpenTelemetry."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import reported_by

# What a pool process goes through: the worker's app loaded (in the parent, before the fork), then Celery's
# signals at the process's start and at its end.
POOL_PROCESS = """
import json, sys
from celery.signals import worker_process_init, worker_process_shutdown
from celery.app.utils import find_app
from app.observability.tracing import tracing_started
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
    report: dict[str, Any] = reported_by(POOL_PROCESS, **environ)
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
