"""Distributed tracing with OpenTelemetry: one trace per order, from the HTTP request to the worker's commit.

Off unless the standard OpenTelemetry environment asks for it (``tracing_enabled``), and then free: no tracer
provider, exporter or instrumentation is set up, and every function below is one check of a module global
before it returns nothing. ``start_tracing`` loads ``app.observability.tracing_sdk`` (the SDK's tracing, the
exporter, the instrumentations) only when tracing is on. (Libraries may import OpenTelemetry's API on their
own when it is installed, redis-py its metrics SDK: that costs start-up time within this machine's noise,
about 0.1 s by -X importtime, and nothing per request.)

The context crosses processes as a W3C ``traceparent``: stored with an event's outbox row
(``current_traceparent``), carried in the message headers by the aio-pika instrumentation, and made current
again on the other side (``continued``), or linked from a span that handles a batch (``span``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from structlog.typing import EventDict, WrappedLogger

from app.config import SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from app.observability.tracing_sdk import Tracing

__all__ = [
    "add_trace_ids",
    "continued",
    "current_traceparent",
    "flush_spans",
    "span",
    "start_tracing",
    "stop_tracing",
    "traces_exporters",
    "tracing_enabled",
    "tracing_started",
]

EXPORTERS = ("otlp", "console")
"""What ``OTEL_TRACES_EXPORTER`` may name besides ``none``: OTLP over HTTP (protobuf), or JSON on stdout."""
SERVICE_NAMES = {"api": "orders-api", "consumer": "orders-consumer", "worker": "orders-worker"}
"""Each role's service name, unless ``OTEL_SERVICE_NAME`` sets one."""

_active: Tracing | None = None
_NOTHING = contextlib.nullcontext()


def traces_exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The trace exporters the environment names: ``OTEL_TRACES_EXPORTER`` (``none`` for none), else ``otlp``
    if an OTLP endpoint is set, else none; none at all when ``OTEL_SDK_DISABLED`` is true. Tracing is on
    when there is one."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    if any(named):
        return [name for name in dict.fromkeys(named) if name and name != "none"]
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return ["otlp"] if any(environ.get(name, "").strip() for name in endpoints) else []


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment turns tracing on: whether it names an exporter (see ``traces_exporters``)."""
    return bool(traces_exporters(environ))


def start_tracing(
    role: str, *, instrument_amqp: bool = False, exporter: Callable[[], SpanExporter] | None = None
) -> bool:
    """Configure tracing for this process, if the environment turns it on; whether it is on.

    Once per process (later calls change nothing). Call it before the role's connections are made; lines
    carry the trace id whether logging was configured before or after (``add_trace_ids`` is always there).
    It instruments what every role uses:
    PostgreSQL (asyncpg, which is also what SQLAlchemy's statements go through) and Redis; with
    ``instrument_amqp``, aio-pika too (the API's publisher and the consumer). Celery is the consumer's and
    worker's own to instrument (a prefork worker after the fork). ``exporter`` makes the exporter that
    replaces the environment's (tests: an in-memory one; called once OpenTelemetry can be imported). Raises
    ``SettingsError`` for an exporter it does not know.
    """
    global _active  # noqa: PLW0603 - the process's one tracing state, read by the hot paths
    if _active is not None:
        return True
    exporters = traces_exporters()  # the environment of now, not of the package's import
    if exporter is None and not exporters:
        return False
    unknown = [name for name in exporters if name not in EXPORTERS]
    if unknown and exporter is None:
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)} (use otlp, console or none)"
        )
    # The SDK's import cost is paid only when tracing is on.
    from app.observability import tracing_sdk  # noqa: PLC0415

    _active = tracing_sdk.Tracing.start(
        SERVICE_NAMES.get(role, f"orders-{role}"), exporters, exporter, instrument_amqp=instrument_amqp
    )
    return True


def stop_tracing() -> None:
    """Export the spans still buffered and remove the instrumentations (tests; a process about to exit
    without running ``atexit`` handlers, such as a forked worker child)."""
    global _active  # noqa: PLW0603
    if _active is not None:
        _active.stop()
        _active = None


def tracing_started() -> bool:
    return _active is not None


def flush_spans() -> None:
    """Export the spans finished so far now, rather than with the next batch."""
    if _active is not None:
        _active.flush()


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active span, to pass on to the work it causes; None if there is none."""
    if _active is None:
        return None
    return _active.current_traceparent()


def continued(traceparent: str | None) -> contextlib.AbstractContextManager[Any]:
    """Make the context a ``traceparent`` names current within the block: the spans begun in it join that
    trace as its children. Nothing when tracing is off or ``traceparent`` is None."""
    if _active is None or not traceparent:
        return _NOTHING
    return _active.continued(traceparent)


def span(
    name: str,
    *,
    parent: str | None = None,
    links: Sequence[str] = (),
    attributes: Mapping[str, Any] | None = None,
    kind: str = "internal",
) -> contextlib.AbstractContextManager[Any]:
    """A span of our own, current within the block, for work no instrumentation sees (a batch of events,
    linked to each event's trace). Its parent is ``parent`` (a traceparent) or else the current span;
    ``links`` are traceparents; ``kind`` is ``internal``, ``server``, ``client``, ``producer`` or
    ``consumer``. It records an exception that leaves the block. Nothing when tracing is off."""
    if _active is None:
        return _NOTHING
    return _active.span(name, parent=parent, links=links, attributes=attributes, kind=kind)


def add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """structlog processor: the active span's ``trace_id`` and ``span_id`` on the line (hex, as tracing
    backends show them). ``configure_logging`` installs it always: with tracing off it only checks it."""
    if _active is not None:
        _active.add_ids(event)
    return event
