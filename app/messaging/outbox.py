"""The transactional outbox: events are rows written in the transaction of the change they announce, then
published to the broker; a relay loop publishes whatever a request could not (broker down, process killed).

A row is marked sent only after the broker confirmed it, so an event may go out twice (a crash between the
confirm and the mark) but never zero times; what handles an event must be idempotent. The message id is the
event id, so duplicates can be recognised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID

import msgspec
import structlog
from advanced_alchemy.base import UUIDv7Base
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from advanced_alchemy.types import DateTimeUTC
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol
from prometheus_client import Counter, Gauge
from sqlalchemy import Index, LargeBinary, String, Update, func, select, text, update
from sqlalchemy.orm import Mapped, mapped_column

from app.config import Settings
from app.messaging.broker import AmqpPublisher, Event, Topology
from app.observability import tracing
from app.observability.metrics import metric
from app.storage.db import autocommit_engine, database_unavailable

log = structlog.get_logger(__name__)

EVENTS_PUBLISHED = Counter(metric("events_published_total"), "Events the broker confirmed", ["topic", "by"])
OUTBOX_PENDING = Gauge(
    metric("outbox_pending"), "Events waiting to be published", multiprocess_mode="mostrecent"
)
OUTBOX_OLDEST_AGE = Gauge(
    metric("outbox_oldest_pending_age_seconds"),
    "Age of the oldest event waiting to be published (0 if none)",
    multiprocess_mode="mostrecent",
)


def _now() -> datetime:
    return datetime.now(UTC)


class OutboxMessage(UUIDv7Base):
    """An event waiting to be published (``sent_at`` null) or already published. Its id is the event id."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_unsent", "created_at", postgresql_where=text("sent_at IS NULL")),
        Index("ix_outbox_sent", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),  # retention's
    )

    topic: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The W3C traceparent of the request that wrote the event, so its publication joins that trace.
    trace_context: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=_now)
    sent_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True))


_EVENT_COLUMNS = [getattr(OutboxMessage, name) for name in Event.__struct_fields__]


async def backlog(db: SQLAlchemyAsyncConfig) -> tuple[int, float]:
    """How many events wait to be published, and how long (seconds) the oldest has waited."""
    unsent = OutboxMessage.sent_at.is_(None)
    async with db.get_session() as session:
        count, oldest = (
            await session.execute(select(func.count(), func.min(OutboxMessage.created_at)).where(unsent))
        ).one()
    return int(count), (_now() - oldest).total_seconds() if oldest else 0.0


class Publisher(Protocol):
    async def connect(self) -> None:
        """Reach the broker, retrying until it answers."""

    async def publish_many(self, events: Sequence[Event]) -> list[bool]:
        """Deliver the events; for each, True once the broker confirmed it, else False (never raises)."""
        ...

    async def close(self) -> None: ...


EventHandler = Callable[[Sequence[Event]], Awaitable[None]]


def publisher_for(settings: Settings, topic: str, handle_in_process: EventHandler) -> Publisher:
    """The outbox's publisher: ``AmqpPublisher``, to RabbitMQ's ``topic`` queue, when ``AMQP_URL`` is set;
    else (the embedded default) ``InProcessBus``, which hands the events to ``handle_in_process`` at once."""
    if settings.amqp_url:
        return AmqpPublisher(settings.amqp_url, Topology(settings.events_exchange, topic))
    return InProcessBus(handle_in_process)


class Outbox:
    """Publishes committed outbox rows at once, in the background, and relays the ones left behind.

    ``dispatch`` hands a committed row to this process's dispatcher and returns at once, so a request never
    waits for the broker. The dispatcher publishes what has come in within ``LINGER`` of a batch's first
    event, as one batch of confirmed publications, and marks the confirmed rows sent with one UPDATE; at
    shutdown it has ``DRAIN_TIMEOUT`` to finish what it was handed. The linger costs an event 20 ms at most
    and saves work at moderate rates, where batches were of one or two events (bench/RESULTS.md, Hand-written
    parts). Whatever it could not publish, or a crash made it forget, stays unsent in the table, where the
    relay finds it.
    """

    BATCH = 200
    GRACE = timedelta(seconds=5)  # younger rows are the dispatcher's; the relay takes the older ones
    QUEUE_LIMIT = 10_000  # rows waiting for the dispatcher; past it they are left to the relay
    DRAIN_TIMEOUT = 5.0  # seconds the shutdown gives the dispatcher (granian gives the whole shutdown 30)
    LINGER = 0.02  # seconds a batch waits for the events of the requests that follow its first

    def __init__(self, db: SQLAlchemyAsyncConfig, publisher: Publisher, relay_interval: float) -> None:
        self.db = db
        self.publisher = publisher
        self.relay_interval = relay_interval
        self._queue: asyncio.Queue[Event] | None = None

    def dispatch(self, event: Event) -> None:
        """Publish an event whose transaction has committed, soon; never blocks, never raises."""
        if self._queue is not None and self._queue.qsize() < self.QUEUE_LIMIT:
            self._queue.put_nowait(event)

    async def run_dispatcher(self, queue: asyncio.Queue[Event]) -> None:
        while True:
            batch = [await queue.get()]
            await asyncio.sleep(self.LINGER)
            while len(batch) < self.BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                sent = await self._publish(batch, by="request")
                if sent:
                    await self._mark_sent(sent)
            except Exception as exc:  # the database away, say: the rows stay unsent and the relay sends them
                _log_failure("outbox dispatch failed; the relay will retry", exc)
            finally:  # done with, sent or not: what ``drain`` waits for
                for _ in batch:
                    queue.task_done()

    async def drain(self, queue: asyncio.Queue[Event]) -> None:
        """Let the dispatcher finish what it was handed, for ``DRAIN_TIMEOUT`` at most.

        At shutdown, events committed by the last requests may still be queued, or in the batch being
        published: without this they would wait for another process's relay, forever if none runs. What the
        time allows goes out (confirmed, then marked sent, as ever); the rest stays unsent for the relay.
        """
        try:
            async with asyncio.timeout(self.DRAIN_TIMEOUT):
                await queue.join()
        except TimeoutError:
            log.warning("outbox not drained in time; the relay will send the rest", queued=queue.qsize())

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows, oldest first; several processes share the work (SKIP LOCKED)."""
        cutoff = _now() - self.GRACE
        async with self.db.get_session() as session, session.begin():
            rows = await session.execute(
                select(*_EVENT_COLUMNS)
                .where(OutboxMessage.sent_at.is_(None), OutboxMessage.created_at <= cutoff)
                .order_by(OutboxMessage.created_at)
                .limit(self.BATCH)
                .with_for_update(skip_locked=True)
            )
            pending = msgspec.convert(rows.all(), list[Event], from_attributes=True)
            sent = await self._publish(pending, by="relay")
            if sent:
                await session.execute(_mark_sent(sent))
        if sent:
            log.info("outbox relayed", count=len(sent))
        return len(sent)

    async def run_relay(self) -> None:
        """Relay until cancelled: at once while a full batch went out, else every ``relay_interval``."""
        while True:
            try:
                sent = await self.relay_once()
                await self.measure_backlog()
            except Exception as exc:  # the loop must outlive a database or broker hiccup
                _log_failure("outbox relay failed; retrying", exc)
                sent = 0
            if sent < self.BATCH:
                await asyncio.sleep(self.relay_interval)

    async def measure_backlog(self) -> None:
        count, age = await backlog(self.db)
        OUTBOX_PENDING.set(count)
        OUTBOX_OLDEST_AGE.set(age)

    async def _publish(self, events: Sequence[Event], by: str) -> set[UUID]:
        """Publish the events; the ids of those the broker confirmed."""
        confirmed = await self.publisher.publish_many(events) if events else []
        sent = {event.id for event, ok in zip(events, confirmed, strict=True) if ok}
        for event in events:
            if event.id in sent:
                EVENTS_PUBLISHED.labels(event.topic, by).inc()
                with (
                    structlog.contextvars.bound_contextvars(request_id=event.request_id),
                    tracing.continued(event.trace_context),  # the line carries the request's trace id
                ):
                    log.info("event published", topic=event.topic, event_id=str(event.id), by=by)
        return sent

    async def _mark_sent(self, ids: set[UUID]) -> None:
        async with autocommit_engine(self.db).connect() as connection:
            await connection.execute(_mark_sent(ids))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the API runs: the publisher's connection, the dispatcher and the relay; all stop with it,
        the dispatcher once it published what it was handed (``drain``), before the publisher closes."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queue = queue
        relay = asyncio.create_task(self.run_relay())
        others = [
            asyncio.create_task(self.publisher.connect()),
            asyncio.create_task(self.run_dispatcher(queue)),
        ]
        try:
            yield
        finally:
            self._queue = None  # an event dispatched from now on stays unsent, for a relay
            relay.cancel()
            try:
                await self.drain(queue)
            finally:  # cancelled meanwhile too: the rows not marked sent stay for a relay
                for task in others:
                    task.cancel()
                await asyncio.gather(relay, *others, return_exceptions=True)
                await self.publisher.close()


def _log_failure(event: str, exc: Exception) -> None:
    """The database away for a moment is a warning naming the cause; anything else a bug, with its trace."""
    if database_unavailable(exc):
        log.warning(event, error=f"{type(exc).__name__}: {exc}")
    else:
        log.exception(event)


def _mark_sent(ids: set[UUID]) -> Update:
    unsent = OutboxMessage.sent_at.is_(None)
    return update(OutboxMessage).where(OutboxMessage.id.in_(ids), unsent).values(sent_at=_now())


class OutboxPlugin(InitPluginProtocol):
    """Runs the outbox within the database's lifespan; list it after the SQLAlchemy plugin.

    A plugin's lifespan is entered after those of the app and of the plugins before it, and left before
    them: the dispatcher and the relay stop before the engine is disposed, so none of them opens a
    connection on a pool that nothing will close.
    """

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.lifespan.append(self.outbox.running())
        return app_config


class InProcessBus:
    """The publisher of the embedded default: hands the events straight to ``handler`` in this process."""

    def __init__(self, handler: EventHandler) -> None:
        self.handler = handler

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish_many(self, events: Sequence[Event]) -> list[bool]:
        try:
            # One span for the batch, linked to the trace of each request that wrote one of its events.
            with tracing.span(
                f"process {events[0].topic}",
                links=[event.trace_context for event in events if event.trace_context],
                attributes={"messaging.batch.message_count": len(events)},
                kind="consumer",
            ):
                await self.handler(events)
        except Exception:  # the events stay in the outbox and the relay retries them
            log.exception("in-process event handler failed", event_ids=[str(event.id) for event in events])
            return [False] * len(events)
        return [True] * len(events)
