"""When tracing is on, from the standard OpenTelemetry environment; and that off costs no import."""

from __future__ import annotations

import pytest

from app.observability.tracing import traces_exporters, tracing_enabled
from tests.support import fresh_interpreter, reported_by


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        pytest.param({}, [], id="nothing set"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"], id="otlp"),
        pytest.param({"OTEL_TRACES_EXPORTER": " Console "}, ["console"], id="console"),
        pytest.param({"OTEL_TRACES_EXPORTER": "none"}, [], id="none"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp,console,otlp"}, ["otlp", "console"], id="several"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"], id="endpoint"),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"], id="traces"
        ),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "   "}, [], id="blank endpoint"),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
            [],
            id="none wins",
        ),
        pytest.param({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"}, [], id="sdk disabled"),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}, ["console"], id="sdk enabled"
        ),
    ],
)
def test_the_standard_environment_turns_tracing_on(environ: dict[str, str], exporters: list[str]) -> None:
    assert traces_exporters(environ) == exporters
    assert tracing_enabled(environ) is bool(exporters)


REPORT = """
import json, sys, app.asgi
instrumentations = ("asyncpg", "redis", "aio_pika")
tracing = ("opentelemetry.sdk.trace", *(f"opentelemetry.instrumentation.{name}" for name in instrumentations))
loaded = (name for name in sys.modules if name.startswith(tracing))
print(json.dumps(sorted(loaded)))
"""


def opentelemetry_modules_loaded(**environ: str) -> list[str]:
    """The modules of OpenTelemetry's tracing SDK and of our instrumentations that a fresh interpreter has
    loaded once it built the API app (libraries import OpenTelemetry's API on their own: redis-py its metrics,
    Litestar its ASGI middleware)."""
    loaded: list[str] = reported_by(REPORT, **environ)
    return loaded


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "none"}], ids=["unset", "none"])
def test_tracing_off_sets_up_no_tracing(environ: dict[str, str]) -> None:
    assert opentelemetry_modules_loaded(**environ) == []


def test_tracing_on_loads_the_sdk_and_the_instrumentations() -> None:
    """The other side of the test above, so that it can fail: the same check sees them when on."""
    loaded = opentelemetry_modules_loaded(OTEL_TRACES_EXPORTER="console")
    assert "opentelemetry.sdk.trace" in loaded
    assert "opentelemetry.instrumentation.asyncpg" in loaded
    assert "opentelemetry.instrumentation.aio_pika" in loaded


def test_an_exporter_it_does_not_know_stops_the_api_with_the_reason() -> None:
    done = fresh_interpreter("import app.asgi", OTEL_TRACES_EXPORTER="zipkin")
    assert done.returncode == 1
    assert "OTEL_TRACES_EXPORTER: unsupported exporter zipkin" in done.stderr
    assert "Traceback" not in done.stderr
