"""The orders service: one codebase, three process roles (API, event consumer, Celery worker)."""

import os
import sys
from collections.abc import Mapping


def traces_exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The trace exporters the environment names: ``OTEL_TRACES_EXPORTER`` (``none`` for none), else ``otlp``
    if an OTLP endpoint is set, else none; none at all when ``OTEL_SDK_DISABLED`` is true. Tracing is on
    when there is one (see ``app.lib.tracing``); here because the package's import needs it, and nothing
    else of the app (``just dev``'s main process imports this package alone)."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    if any(named):
        return [name for name in dict.fromkeys(named) if name and name != "none"]
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return ["otlp"] if any(environ.get(name, "").strip() for name in endpoints) else []


if not traces_exporters():
    # Tracing off costs no OpenTelemetry import: redis-py imports OpenTelemetry's SDK when it is installed
    # (its own metrics), Litestar its OpenTelemetry plugin with every app, together ~70 ms of start-up. Both
    # treat the package as absent when importing it fails, which None here makes it do.
    # ``start_tracing`` lifts this.
    sys.modules.setdefault("opentelemetry", None)  # type: ignore[arg-type]
