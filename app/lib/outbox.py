"""The transactional outbox: events are rows written in the transaction of the change they announce, then
published to the broker; a relay loop publishes whatever a request could not (broker down, process killed).

A row is marked sent only after the broker confirmed it, so an event may go out twice (a crash between the
confirm and the mark) but never zero times; what handles an event must be idempotent. The message id is the
event id, so duplicates can be recognised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog
from advanced_alchemy.base import UUIDv7Base
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from advanced_alchemy.types import DateTimeUTC
from prometheus_client import Counter, Gauge
from sqlalchemy import Index, LargeBinary, String, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
from sqlalchemy.orm import Mapped, mapped_column

from app.lib.metrics import metric

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
    __table_args__ = (Index("ix_outbox_unsent", "created_at", postgresql_where=text("sent_at IS NULL")),)

    topic: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=_now)
    sent_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True))


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

    async def publish(self, message: OutboxMessage) -> bool:
        """Deliver ``message``; True once the broker confirmed it, False (never an exception) otherwise."""
        ...

    async def close(self) -> None: ...


class Outbox:
    """Publishes committed outbox rows at once, and relays the ones left behind."""

    BATCH = 200
    GRACE = timedelta(seconds=5)  # younger rows are still being published by their request

    def __init__(self, db: SQLAlchemyAsyncConfig, publisher: Publisher, relay_interval: float) -> None:
        self.db = db
        self.publisher = publisher
        self.relay_interval = relay_interval

    async def publish_committed(
        self, session: AsyncSession | async_scoped_session[AsyncSession], message: OutboxMessage
    ) -> bool:
        """Publish a row whose transaction has committed, and mark it sent; left to the relay on failure.

        Never raises: the change it announces is committed already, and its request must not fail now.
        """
        if not await self.publisher.publish(message):
            return False
        _published(message, "request")
        message.sent_at = _now()
        try:
            await session.commit()
        except SQLAlchemyError as exc:  # published, not marked: the relay sends a harmless duplicate
            log.warning("outbox row not marked sent", event_id=str(message.id), error=str(exc))
            await session.rollback()
            return False
        return True

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows, oldest first; several processes share the work (SKIP LOCKED)."""
        cutoff = _now() - self.GRACE
        async with self.db.get_session() as session, session.begin():
            pending = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.sent_at.is_(None), OutboxMessage.created_at <= cutoff)
                    .order_by(OutboxMessage.created_at)
                    .limit(self.BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            sent = 0
            for message in pending:
                with structlog.contextvars.bound_contextvars(request_id=message.request_id):
                    if not await self.publisher.publish(message):
                        break  # the broker is away: the rest waits for the next round
                    _published(message, "relay")
                message.sent_at = _now()
                sent += 1
        if sent:
            log.info("outbox relayed", count=sent)
        return sent

    async def run_relay(self) -> None:
        """Relay until cancelled: at once while a full batch went out, else every ``relay_interval``."""
        while True:
            try:
                sent = await self.relay_once()
                await self.measure_backlog()
            except Exception:  # the loop must outlive a database or broker hiccup
                log.exception("outbox relay failed; retrying")
                sent = 0
            if sent < self.BATCH:
                await asyncio.sleep(self.relay_interval)

    async def measure_backlog(self) -> None:
        count, age = await backlog(self.db)
        OUTBOX_PENDING.set(count)
        OUTBOX_OLDEST_AGE.set(age)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the API runs: the publisher's connection and the relay loop; both stop with the API."""
        tasks = [asyncio.create_task(self.publisher.connect()), asyncio.create_task(self.run_relay())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.publisher.close()


def _published(message: OutboxMessage, by: str) -> None:
    EVENTS_PUBLISHED.labels(message.topic, by).inc()
    log.info("event published", topic=message.topic, event_id=str(message.id), by=by)


class InProcessBus:
    """The publisher of the embedded default: hands each event straight to ``handler`` in this process."""

    def __init__(self, handler: Callable[[OutboxMessage], Awaitable[None]]) -> None:
        self.handler = handler

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, message: OutboxMessage) -> bool:
        try:
            await self.handler(message)
        except Exception:  # the event stays in the outbox and the relay retries it
            log.exception("in-process event handler failed", event_id=str(message.id))
            return False
        return True
