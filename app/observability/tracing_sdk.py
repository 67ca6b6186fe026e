"""The OpenTelemetry SDK behind ``app.observability.tracing``, imported only when tracing is on (see there).

The SDK reads its own environment: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
(``Resource.create``), ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` (``TracerProvider``'s default
sampler), ``OTEL_BSP_*`` (``BatchSpanProcessor``) and ``OTEL_EXPORTER_OTLP_*`` (the OTLP exporter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, SpanKind
from structlog.typing import EventDict

_KINDS = {kind.name.lower(): kind for kind in SpanKind}
_TRACEPARENT = "traceparent"


def _one_line(span: ReadableSpan) -> str:
    return f"{span.to_json(indent=None)}\n"


def _exporter(name: str) -> SpanExporter:
    if name == "console":  # one JSON object per line on stdout
        return ConsoleSpanExporter(formatter=_one_line)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    return OTLPSpanExporter()  # its endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*


def _provider(service_name: str) -> TracerProvider:
    """The process's provider, made global on the first start (OpenTelemetry lets it be set once)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    trace.set_tracer_provider(provider)
    return provider


def _instrumentors(instrument_amqp: bool) -> list[BaseInstrumentor]:
    # asyncpg carries every PostgreSQL statement, SQLAlchemy's and the page query's, one span each; the
    # SQLAlchemy instrumentation would add a second span per statement on top of it.
    instrumentors: list[BaseInstrumentor] = [
        AsyncPGInstrumentor(),  # type: ignore[no-untyped-call]
        RedisInstrumentor(),
    ]
    if instrument_amqp:
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor  # noqa: PLC0415

        instrumentors.append(AioPikaInstrumentor())
    return instrumentors


class Tracing:
    """Tracing turned on in this process: its provider, tracer and instrumentations."""

    def __init__(self, provider: TracerProvider, instrumentors: list[BaseInstrumentor]) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("app")
        self.instrumentors = instrumentors

    @classmethod
    def start(
        cls,
        service_name: str,
        exporters: Sequence[str],
        exporter: Callable[[], SpanExporter] | None,
        *,
        instrument_amqp: bool,
    ) -> Tracing:
        fresh = not isinstance(trace.get_tracer_provider(), TracerProvider)
        provider = _provider(service_name)
        if fresh:  # a restart in the same process (tests) keeps the first start's exporters
            for each in [exporter()] if exporter is not None else [_exporter(name) for name in exporters]:
                provider.add_span_processor(BatchSpanProcessor(each))  # its settings from OTEL_BSP_*
        instrumentors = _instrumentors(instrument_amqp)
        for instrumentor in instrumentors:
            instrumentor.instrument(tracer_provider=provider)
        return cls(provider, instrumentors)

    def stop(self) -> None:
        self.flush()
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()

    def flush(self) -> None:
        self.provider.force_flush()

    def current_traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier.get(_TRACEPARENT)

    @contextlib.contextmanager
    def continued(self, traceparent: str) -> Iterator[None]:
        token = context.attach(propagate.extract({_TRACEPARENT: traceparent}))
        try:
            yield
        finally:
            context.detach(token)

    def span(
        self,
        name: str,
        *,
        parent: str | None,
        links: Sequence[str],
        attributes: Mapping[str, Any] | None,
        kind: str,
    ) -> contextlib.AbstractContextManager[Any]:
        return self.tracer.start_as_current_span(
            name,
            context=propagate.extract({_TRACEPARENT: parent}) if parent else None,
            kind=_KINDS[kind],
            attributes=dict(attributes) if attributes else None,
            links=[link for link in map(_link, links) if link is not None],
        )

    def add_ids(self, event: EventDict) -> None:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            event["trace_id"] = trace.format_trace_id(span_context.trace_id)
            event["span_id"] = trace.format_span_id(span_context.span_id)


def _link(traceparent: str) -> Link | None:
    span_context = trace.get_current_span(propagate.extract({_TRACEPARENT: traceparent})).get_span_context()
    return Link(span_context) if span_context.is_valid else None
