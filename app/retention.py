"""Retention: rows that nothing will read again are deleted, in small batches, by every API process.

- Published outbox rows, ``OUTBOX_RETENTION_SECONDS`` after they were sent (the unsent ones are never
  touched: the relay still owes them to the broker).
- ``Idempotency-Key`` records past their window: an expired record is only ever taken over by a new order
  with the same key, which a missing record allows just as well.
- Login sessions past their expiry. ``expires_at`` moves with every refresh and bounds the expiry of every
  token issued in the session, revoked ones included: a revoked session must outlive its tokens, because a
  revocation missing from Redis is copied there from the session's row, and a deleted row can't be copied.

Every API process runs the job every ``RETENTION_INTERVAL_SECONDS`` (jittered, so processes don't line up).
Each batch is one statement that claims its rows with ``FOR UPDATE SKIP LOCKED``: processes running at once
delete different rows, never the same twice, and never wait for a row a request holds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol
from prometheus_client import Counter
from sqlalchemy import (
    ColumnElement,
    Delete,
    Select,
    Table,
    any_,
    delete,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.orm import InstrumentedAttribute

from app.accounts.models import AuthSession
from app.config import Settings
from app.messaging.outbox import OutboxMessage
from app.observability.metrics import metric
from app.orders.models import OrderIdempotencyKey
from app.storage.db import autocommit_engine

log = structlog.get_logger(__name__)

RETENTION_DELETED = Counter(metric("retention_deleted_total"), "Rows deleted by the retention job", ["table"])

SESSION_GRACE = timedelta(seconds=60)
"""Kept past ``expires_at``: a session's tokens are stamped a moment after it, and hosts' clocks differ."""


@dataclass(frozen=True)
class Purge:
    """What of one table goes: the rows whose ``column`` is older than ``kept_for``."""

    column: InstrumentedAttribute[Any]
    kept_for: timedelta

    @property
    def table(self) -> Table:
        return cast("Table", self.column.class_.__table__)

    def batch(self, now: datetime, size: int, dialect: str) -> Delete:
        """Delete at most ``size`` of the oldest such rows, skipping those another transaction holds.

        On PostgreSQL the rows are claimed by their address (``ctid``), gathered into an array that the
        DELETE reads with a TID scan: joining the claimed rows' keys back to the table instead, the planner
        would often choose to scan the whole table. A claimed row is locked, so its address can't change.
        """
        if dialect == "postgresql":
            address: ColumnElement[Any] = literal_column("ctid")
            claimed = self._oldest(address, now=now, size=size).with_for_update(skip_locked=True)
            return delete(self.table).where(address == any_(func.array(claimed.scalar_subquery())))
        # Elsewhere (SQLite, the embedded default) by primary key: its writers take turns, nothing to skip.
        key = list(self.table.primary_key.columns)
        return delete(self.table).where(tuple_(*key).in_(self._oldest(*key, now=now, size=size)))

    def _oldest(self, *columns: ColumnElement[Any], now: datetime, size: int) -> Select[Any]:
        return select(*columns).where(self.column < now - self.kept_for).order_by(self.column).limit(size)


def purges(outbox_retention: timedelta, idempotency_key_lifetime: timedelta) -> list[Purge]:
    """The service's retention rules."""
    return [
        Purge(OutboxMessage.sent_at, outbox_retention),
        Purge(OrderIdempotencyKey.created_at, idempotency_key_lifetime),
        Purge(AuthSession.expires_at, SESSION_GRACE),
    ]


class Retention:
    """Deletes what the purges say, a batch per table at a time, every ``interval`` seconds (jittered)."""

    BATCH = 1000
    """Rows per DELETE: a statement's locks and WAL stay small (a few ms on PostgreSQL), so requests writing
    the same tables never queue behind it, while a backlog still goes at thousands of rows a second."""
    BACKLOG_PAUSE = 0.1  # seconds between the batches of a backlog: a catch-up never hogs the database

    def __init__(
        self, db: SQLAlchemyAsyncConfig, purges: Sequence[Purge], interval: float, batch: int = BATCH
    ) -> None:
        self.db = db
        self.purges = purges
        self.interval = interval
        self.batch = batch

    @classmethod
    def from_settings(cls, db: SQLAlchemyAsyncConfig, settings: Settings) -> Retention:
        rules = purges(
            outbox_retention=timedelta(seconds=settings.outbox_retention_seconds),
            idempotency_key_lifetime=timedelta(seconds=settings.idempotency_key_ttl_seconds),
        )
        return cls(db, rules, settings.retention_interval_seconds)

    async def purge_once(self) -> dict[str, int]:
        """One batch of each table: the rows deleted, by table."""
        now = datetime.now(UTC)
        deleted: dict[str, int] = {}
        async with autocommit_engine(self.db).connect() as connection:
            for purge in self.purges:  # each statement is atomic on its own and commits at once
                statement = purge.batch(now, self.batch, connection.dialect.name)
                count = (await connection.execute(statement)).rowcount
                deleted[purge.table.name] = count
                if count:
                    RETENTION_DELETED.labels(purge.table.name).inc(count)
        return deleted

    async def purge(self) -> dict[str, int]:
        """Batches until no table has a full one left: the rows deleted, by table."""
        total = dict.fromkeys((purge.table.name for purge in self.purges), 0)
        while True:
            deleted = await self.purge_once()
            for table, count in deleted.items():
                total[table] += count
            if max(deleted.values(), default=0) < self.batch:
                return total
            await asyncio.sleep(self.BACKLOG_PAUSE)

    async def run(self) -> None:
        """Purge until cancelled, every ``interval`` seconds give or take half of it."""
        while True:
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.5))  # noqa: S311 - spreads, no secret
            try:
                deleted = await self.purge()
            except Exception as exc:  # the database may be away: the next pass tries again
                log.warning("retention pass failed; the next one retries", error=str(exc))
                continue
            if any(deleted.values()):
                log.info("retention pass", **deleted)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class RetentionPlugin(InitPluginProtocol):
    """Runs the retention job within the database's lifespan; list it after the SQLAlchemy plugin (see
    ``OutboxPlugin``)."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.lifespan.append(self.retention.running())
        return app_config
