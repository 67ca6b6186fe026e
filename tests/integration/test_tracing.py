"""Tracing on, in this process, with spans kept in memory: one trace from ``POST /orders`` through its SQL to
the publication of its event, whichever API process publishes it. Against the real PostgreSQL, Redis and
RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import pytest

from app.config import Settings
from app.messaging.outbox import Outbox
from app.observability import tracing
from tests.conftest import deployed
from tests.support import (
    AMQP_URL,
    eventually,
    place_order,
    same_stores,
    serving,
    signed_up,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

UNREACHABLE_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"
EVENT_OF_ORDER = (
    "SELECT id, trace_context, sent_at FROM outbox"
    " WHERE convert_from(payload, 'UTF8')::jsonb->>'order_id' = $1"
)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing started for this module's apps, its spans kept in memory; stopped at the module's end."""
    kept: list[InMemorySpanExporter] = []

    def in_memory() -> SpanExporter:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
            InMemorySpanExporter,
        )

        kept.append(InMemorySpanExporter())
        return kept[0]

    assert tracing.start_tracing("api", instrument_amqp=True, exporter=in_memory)
    yield kept[0]
    tracing.stop_tracing()


@pytest.fixture
def deployment(database_url: str, spans: InMemorySpanExporter) -> Iterator[Settings]:
    """Its own exchange and queues (no consumer: published messages stay in the queue), deleted at the end."""
    with deployed(database_url) as settings:
        spans.clear()
        yield settings


async def event_of(settings: Settings, order_id: str) -> asyncpg.Record:
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        [event] = await connection.fetch(EVENT_OF_ORDER, order_id)
    finally:
        await connection.close()
    return event


async def event_sent(settings: Settings, order_id: str) -> bool:
    return (await event_of(settings, order_id))["sent_at"] is not None


async def queued_headers(settings: Settings) -> dict[str, Any]:
    """The headers of the one message in the deployment's queue."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        queue = await channel.get_queue(f"{settings.events_exchange}.new_order")
        message = await queue.get(fail=True)
        await message.ack()
        return dict(message.headers)


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.flush_spans()
    return list(exporter.get_finished_spans())


def ids(span: ReadableSpan) -> tuple[str, str]:
    """The span's trace id and span id, in hex as a traceparent writes them."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


def request_span(all_spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [found] = [span for span in all_spans if span.kind.name == "SERVER" and span.name == name]
    return found


def publish_span(all_spans: list[ReadableSpan], event_id: str) -> ReadableSpan:
    [found] = [
        span
        for span in all_spans
        if span.kind.name == "PRODUCER" and (span.attributes or {}).get("messaging.message.id") == event_id
    ]
    return found


def descends_from(span: ReadableSpan, ancestor: ReadableSpan, all_spans: list[ReadableSpan]) -> bool:
    by_id = {ids(each)[1]: each for each in all_spans}
    current: ReadableSpan | None = span
    while current is not None:
        if current is ancestor:
            return True
        parent = parent_id(current)
        current = by_id.get(parent) if parent else None
    return False


async def test_an_order_s_request_its_sql_and_its_event_s_publication_are_one_trace(
    deployment: Settings, spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(deployment) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice)
        await eventually(partial(event_sent, deployment, order["id"]), "the event to be published")
        headers = await queued_headers(deployment)
    event = await event_of(deployment, order["id"])
    all_spans = finished(spans)

    request = request_span(all_spans, "POST /orders")
    trace_id, request_span_id = ids(request)
    # The request's SQL: PostgreSQL statements within the request's span (the INSERT of order and event).
    statements = [
        span
        for span in all_spans
        if (span.attributes or {}).get("db.system") == "postgresql"
        and descends_from(span, request, all_spans)
    ]
    assert any(span.name == "WITH" or span.name.startswith("INSERT") for span in statements), [
        span.name for span in statements
    ]
    # The outbox row holds the request's traceparent; the publication is the request span's child.
    assert event["trace_context"] == f"00-{trace_id}-{request_span_id}-03"
    publish = publish_span(all_spans, str(event["id"]))
    assert ids(publish)[0] == trace_id
    assert parent_id(publish) == request_span_id
    # The message carries the publication's context, for the consumer to continue.
    assert headers["traceparent"] == f"00-{trace_id}-{ids(publish)[1]}-03"
    # The request's log lines carry its trace id (its access line, say).
    logged = capsys.readouterr().err.splitlines()
    assert any("request" in line and "POST" in line and f"trace_id={trace_id}" in line for line in logged)


async def test_an_event_relayed_by_another_process_after_the_broker_was_down_continues_the_request_trace(
    deployment: Settings, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(same_stores(deployment, amqp_url=UNREACHABLE_AMQP_URL)) as cut_off:
        alice = await signed_up(cut_off)
        order = await place_order(cut_off, alice)
    event = await event_of(deployment, order["id"])
    assert event["sent_at"] is None  # left in the outbox

    monkeypatch.setattr(Outbox, "GRACE", timedelta(0))  # relay at once rather than after 5 s
    async with serving(deployment):  # another API process, which reaches RabbitMQ
        await eventually(partial(event_sent, deployment, order["id"]), "the relay to publish the event")
    all_spans = finished(spans)

    trace_id, request_span_id = ids(request_span(all_spans, "POST /orders"))
    assert event["trace_context"] == f"00-{trace_id}-{request_span_id}-03"
    publish = publish_span(all_spans, str(event["id"]))
    assert ids(publish)[0] == trace_id
    assert parent_id(publish) == request_span_id
