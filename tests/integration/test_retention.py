"""The retention job against the real PostgreSQL (and the embedded SQLite): what goes, what stays, in bounded
batches, shared by processes running it at once, and counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from app.accounts.models import AuthSession, User
from app.config import Settings
from app.messaging.outbox import OutboxMessage
from app.orders.models import Order, OrderIdempotencyKey
from app.retention import SESSION_GRACE, Purge, Retention, purges
from app.storage.db import autocommit_engine, sqlalchemy_config
from tests.proxy import proxy_to
from tests.support import (
    POSTGRES_URL,
    eventually,
    login,
    migrate,
    migrated_database,
    serving,
    settings_for,
    signed_up,
)

OUTBOX_RETENTION = timedelta(hours=1)
IDEMPOTENCY_WINDOW = timedelta(seconds=Settings().idempotency_key_ttl_seconds)  # the default
TABLES = ("outbox", "order_idempotency_key", "auth_session")
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """This module's own database: no other test's rows, nor another app's retention job, in it."""
    with migrated_database() as url:
        yield url


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the database, emptied for the test, with a user whose rows the test adds."""
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    await connection.execute("TRUNCATE outbox, order_idempotency_key, auth_session, orders, user_account")
    await connection.execute(
        "INSERT INTO user_account (id, email, password_hash, role, created_at, updated_at)"
        " VALUES ($1, 'retention@example.com', 'x', 'user', now(), now())",
        USER_ID,
    )
    yield connection
    await connection.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[SQLAlchemyAsyncConfig]:
    config = sqlalchemy_config(database_url, pool_size=2)
    yield config
    await config.get_engine().dispose()


USER_ID = uuid4()


def ago(age: timedelta) -> datetime:
    return datetime.now(UTC) - age


async def add_outbox(pg: asyncpg.Connection, count: int, sent: datetime | None) -> set[UUID]:
    rows = await pg.fetch(
        "INSERT INTO outbox (id, topic, payload, created_at, sent_at)"
        " SELECT gen_random_uuid(), 'new_order', '\\x00', $1, $2 FROM generate_series(1, $3) RETURNING id",
        sent or ago(3 * 24 * HOUR),
        sent,
        count,
    )
    return {row["id"] for row in rows}


async def add_keys(pg: asyncpg.Connection, count: int, created: datetime) -> set[str]:
    """Idempotency-Key records made at ``created``, each with its order."""
    rows = await pg.fetch(
        "WITH placed AS (INSERT INTO orders (id, user_id, items, total_price, status, version, created_at,"
        " updated_at) SELECT gen_random_uuid(), $1, '[]', 1, 'PENDING', 1, $2, $2"
        " FROM generate_series(1, $3) RETURNING id)"
        " INSERT INTO order_idempotency_key (user_id, key, fingerprint, order_id, created_at)"
        " SELECT $1, id::text, 'f', id, $2 FROM placed RETURNING key",
        USER_ID,
        created,
        count,
    )
    return {row["key"] for row in rows}


async def add_sessions(
    pg: asyncpg.Connection, count: int, expires: datetime, revoked: datetime | None = None
) -> set[UUID]:
    rows = await pg.fetch(
        "INSERT INTO auth_session (id, user_id, refresh_jti, expires_at, revoked_at, created_at, updated_at)"
        " SELECT gen_random_uuid(), $1, gen_random_uuid(), $2, $3, now(), now()"
        " FROM generate_series(1, $4) RETURNING id",
        USER_ID,
        expires,
        revoked,
        count,
    )
    return {row["id"] for row in rows}


async def remaining(pg: asyncpg.Connection) -> dict[str, set[Any]]:
    return {
        "outbox": {row["id"] for row in await pg.fetch("SELECT id FROM outbox")},
        "order_idempotency_key": {
            row["key"] for row in await pg.fetch("SELECT key FROM order_idempotency_key")
        },
        "auth_session": {row["id"] for row in await pg.fetch("SELECT id FROM auth_session")},
    }


def counted() -> dict[str, float]:
    """``orders_retention_deleted_total`` of each table, as this process counted so far."""
    return {
        table: REGISTRY.get_sample_value("orders_retention_deleted_total", {"table": table}) or 0.0
        for table in TABLES
    }


def since(before: dict[str, float]) -> dict[str, float]:
    return {table: count - before[table] for table, count in counted().items()}


def retention(db: SQLAlchemyAsyncConfig, batch: int = Retention.BATCH, interval: float = 60.0) -> Retention:
    return Retention(db, purges(OUTBOX_RETENTION, IDEMPOTENCY_WINDOW), interval, batch)


async def test_rows_past_retention_go_and_every_other_row_stays(
    pg: asyncpg.Connection, db: SQLAlchemyAsyncConfig
) -> None:
    sent_long_ago = await add_outbox(pg, 3, sent=ago(OUTBOX_RETENTION + HOUR))
    kept_events = await add_outbox(pg, 2, sent=ago(OUTBOX_RETENTION - 5 * timedelta(minutes=1)))
    kept_events |= await add_outbox(pg, 2, sent=None)  # unsent, however old: the relay still owes them
    expired_keys = await add_keys(pg, 3, created=ago(IDEMPOTENCY_WINDOW + timedelta(minutes=1)))
    live_keys = await add_keys(pg, 2, created=ago(IDEMPOTENCY_WINDOW - timedelta(minutes=1)))
    expired = await add_sessions(pg, 2, expires=ago(SESSION_GRACE + timedelta(minutes=1)))
    expired |= await add_sessions(pg, 1, expires=ago(2 * HOUR), revoked=ago(3 * HOUR))
    live = await add_sessions(pg, 2, expires=ago(-HOUR))
    live |= await add_sessions(pg, 1, expires=ago(SESSION_GRACE / 2))  # expired, tokens maybe not yet
    live |= await add_sessions(pg, 1, expires=ago(-HOUR), revoked=ago(3 * HOUR))  # tokens not expired yet
    before = counted()

    deleted = await retention(db).purge()

    assert deleted == {"outbox": 3, "order_idempotency_key": 3, "auth_session": 3}
    assert since(before) == deleted
    assert await remaining(pg) == {
        "outbox": kept_events,
        "order_idempotency_key": live_keys,
        "auth_session": live,
    }
    assert not sent_long_ago & kept_events
    assert not expired_keys & live_keys
    assert not expired & live


async def test_each_batch_is_bounded_and_a_backlog_goes_over_several(
    pg: asyncpg.Connection, db: SQLAlchemyAsyncConfig
) -> None:
    await add_outbox(pg, 25, sent=ago(2 * OUTBOX_RETENTION))
    await add_keys(pg, 25, created=ago(2 * IDEMPOTENCY_WINDOW))
    await add_sessions(pg, 25, expires=ago(HOUR))
    job = retention(db, batch=10)

    batches = [await job.purge_once() for _ in range(4)]

    for table in TABLES:
        assert [batch[table] for batch in batches] == [10, 10, 5, 0]
    assert await remaining(pg) == {table: set() for table in TABLES}
    await add_outbox(pg, 25, sent=ago(2 * OUTBOX_RETENTION))
    assert await job.purge() == {"outbox": 25, "order_idempotency_key": 0, "auth_session": 0}


async def test_processes_running_it_at_once_delete_each_row_once(
    pg: asyncpg.Connection, database_url: str
) -> None:
    rows = 1000
    await add_outbox(pg, rows, sent=ago(2 * OUTBOX_RETENTION))
    await add_keys(pg, rows, created=ago(2 * IDEMPOTENCY_WINDOW))
    await add_sessions(pg, rows, expires=ago(HOUR))
    processes = [sqlalchemy_config(database_url, pool_size=1) for _ in range(2)]  # a pool each
    before = counted()
    try:
        totals = await asyncio.gather(*(retention(db, batch=50).purge() for db in processes))
    finally:
        for db in processes:
            await db.get_engine().dispose()

    assert since(before) == dict.fromkeys(TABLES, rows)
    for table in TABLES:
        assert sum(total[table] for total in totals) == rows
        assert all(total[table] > 0 for total in totals), "both shared the work"
    assert await remaining(pg) == {table: set() for table in TABLES}


async def test_rows_another_transaction_holds_are_skipped_not_waited_for(
    pg: asyncpg.Connection, database_url: str, db: SQLAlchemyAsyncConfig
) -> None:
    held = await add_outbox(pg, 2, sent=ago(2 * OUTBOX_RETENTION))
    await add_outbox(pg, 3, sent=ago(2 * OUTBOX_RETENTION))
    holder = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM outbox WHERE id = any($1::uuid[]) FOR UPDATE", list(held))
            deleted = await asyncio.wait_for(retention(db).purge_once(), timeout=5)
    finally:
        await holder.close()

    assert deleted["outbox"] == 3
    assert (await remaining(pg))["outbox"] == held
    assert (await retention(db).purge_once())["outbox"] == 2  # once released


@pytest.mark.parametrize(
    "purge", purges(OUTBOX_RETENTION, IDEMPOTENCY_WINDOW), ids=lambda purge: purge.table.name
)
async def test_each_batch_finds_its_rows_through_an_index(
    purge: Purge, pg: asyncpg.Connection, db: SQLAlchemyAsyncConfig
) -> None:
    """A table the size of a busy day, a third of it past retention: the plan reads no table whole."""
    await add_outbox(pg, 20_000, sent=ago(2 * OUTBOX_RETENTION))
    await add_outbox(pg, 40_000, sent=ago(OUTBOX_RETENTION / 2))
    await add_keys(pg, 20_000, created=ago(2 * IDEMPOTENCY_WINDOW))
    await add_keys(pg, 40_000, created=ago(IDEMPOTENCY_WINDOW / 2))
    await add_sessions(pg, 20_000, expires=ago(HOUR))
    await add_sessions(pg, 40_000, expires=ago(-HOUR))
    await pg.execute("ANALYZE")
    compiled = purge.batch(datetime.now(UTC), Retention.BATCH, "postgresql").compile(
        dialect=asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
    )
    parameters = [compiled.params[name] for name in compiled.positiontup or ()]

    plan = "\n".join(row[0] for row in await pg.fetch(f"EXPLAIN {compiled}", *parameters))

    assert "Seq Scan" not in plan, plan
    assert f"Index Scan using ix_{purge.table.name}_" in plan, plan
    assert "Tid Scan" in plan, plan


async def test_a_login_leaves_its_users_expired_sessions_to_the_job(
    pg: asyncpg.Connection, database_url: str, db: SQLAlchemyAsyncConfig
) -> None:
    """One deleter only: a login that pruned them too failed (500) whenever the job deleted one of them
    between the pruning's read and its delete, which advanced-alchemy's ``delete_where`` took for an error."""
    async with serving(settings_for(database_url)) as client:
        account = await signed_up(client)
        user_id = UUID(account.id)
        await pg.execute("UPDATE auth_session SET expires_at = $1 WHERE user_id = $2", ago(HOUR), user_id)
        await login(client, account)

        expired = "SELECT count(*) FROM auth_session WHERE user_id = $1 AND expires_at < now()"
        assert await pg.fetchval(expired, user_id) == 1
        assert (await retention(db).purge())["auth_session"] == 1
        assert await pg.fetchval("SELECT count(*) FROM auth_session WHERE user_id = $1", user_id) == 1


async def test_each_api_process_runs_it_in_its_lifespan(pg: asyncpg.Connection, database_url: str) -> None:
    settings = settings_for(database_url, retention_interval_seconds=0.05, outbox_retention_seconds=60)
    await add_outbox(pg, 3, sent=ago(timedelta(minutes=2)))
    kept = await add_outbox(pg, 2, sent=ago(timedelta(seconds=10)))

    async def only_recent_events_left() -> bool:
        return (await remaining(pg))["outbox"] == kept

    async with serving(settings):
        await eventually(only_recent_events_left, "the API's retention job to delete the old events")


async def test_it_carries_on_through_a_database_outage(pg: asyncpg.Connection, database_url: str) -> None:
    await add_outbox(pg, 3, sent=ago(2 * OUTBOX_RETENTION))
    with proxy_to(POSTGRES_URL) as proxy:
        db = sqlalchemy_config(proxy.url(database_url), pool_size=1)
        proxy.cut()
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(retention(db, interval=0.05).run())

            async def failed_twice() -> bool:
                return len(failures(logs)) >= 2

            await eventually(failed_twice, "passes to fail while the database is away")
        proxy.restore()

        async def events_deleted() -> bool:
            return not (await remaining(pg))["outbox"]

        try:
            await eventually(events_deleted, "the job to delete the events once the database is back")
        finally:
            running.cancel()
            await db.get_engine().dispose()
    assert all(entry["log_level"] == "warning" for entry in failures(logs))


def failures(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"].startswith("retention pass failed")]


async def test_it_runs_on_the_embedded_default(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    migrate(url)
    db = sqlalchemy_config(url)
    user, old, recent = uuid4(), ago(IDEMPOTENCY_WINDOW + HOUR), ago(HOUR / 2)
    try:
        async with autocommit_engine(db).connect() as connection:
            await connection.execute(insert(User).values(id=user, email="a@example.com", password_hash="x"))
            for created in (old, old, old, recent):
                order = uuid4()
                await connection.execute(
                    insert(Order).values(id=order, user_id=user, items=[], total_price=1, created_at=created)
                )
                key = {"user_id": user, "key": str(order), "fingerprint": "f", "order_id": order}
                await connection.execute(insert(OrderIdempotencyKey).values(**key, created_at=created))
                await connection.execute(
                    insert(OutboxMessage).values(topic="t", payload=b"", created_at=created, sent_at=created)
                )
                await connection.execute(
                    insert(AuthSession).values(
                        user_id=user, refresh_jti=uuid4(), expires_at=created + 2 * HOUR
                    )
                )
        deleted = [await retention(db, batch=2).purge_once() for _ in range(3)]
        async with autocommit_engine(db).connect() as connection:
            left = [
                await connection.scalar(select(func.count()).select_from(model))
                for model in (OutboxMessage, OrderIdempotencyKey, AuthSession)
            ]
    finally:
        await db.get_engine().dispose()

    assert deleted == [dict.fromkeys(TABLES, 2), dict.fromkeys(TABLES, 1), dict.fromkeys(TABLES, 0)]
    assert left == [1, 1, 1]
