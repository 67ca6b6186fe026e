"""Alembic environment: plain `alembic upgrade head` against DATABASE_URL, each run in one transaction but for
a migration's autocommit block (an index built CONCURRENTLY), which commits the migrations before it.

`alembic upgrade --sql` prints a migration's SQL instead (offline mode): db/lint_migrations.py lints it with
squawk. A test hands its own engine in `config.attributes["connection"]` (pytest-alembic does).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from advanced_alchemy.base import orm_registry
from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import app.accounts.models
import app.messaging.outbox
import app.orders.models  # noqa: F401 - importing the models registers their tables
from app.config import Settings, SettingsError

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = orm_registry.metadata

# A statement waiting for a lock queues every later query on that table behind it: a migration gives up
# rather than stall the service (run it again, or raise it with `alembic -x lock_timeout=30s upgrade head`).
LOCK_TIMEOUT = context.get_x_argument(as_dictionary=True).get("lock_timeout", "5s")


def database_url() -> str:
    try:
        return config.attributes.get("database_url") or Settings.from_env().database_url
    except SettingsError as exc:
        raise SystemExit(f"orders: {exc}") from None  # what is wrong, as the service says it, no traceback


def configure(
    dialect: str,
    *,
    connection: Connection | None = None,
    url: str | None = None,
    literal_binds: bool = False,
    dialect_opts: dict[str, Any] | None = None,
) -> None:
    context.configure(
        connection=connection,
        url=url,
        literal_binds=literal_binds,
        dialect_opts=dialect_opts,
        target_metadata=target_metadata,
        render_as_batch=dialect == "sqlite",  # SQLite alters tables by copying them
        transactional_ddl=True,  # SQLite's DDL is transactional too, once the driver lets it (see below)
        compare_type=True,
        transaction_per_migration=False,  # one transaction for the whole upgrade
    )


def run_migrations(dialect: str) -> None:
    with context.begin_transaction():
        if dialect == "postgresql":
            # Session-wide (not SET LOCAL): it outlives the commits of the migrations' autocommit blocks.
            context.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        context.run_migrations()


def run_offline() -> None:
    url = database_url()
    dialect = make_url(url).get_backend_name()
    configure(dialect, url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    run_migrations(dialect)


def run_sync(connection: Connection) -> None:
    configure(connection.dialect.name, connection=connection)
    run_migrations(connection.dialect.name)


def transactional_sqlite(engine: Engine) -> None:
    """The sqlite3 driver (under aiosqlite) begins no transaction before DDL, so each CREATE or ALTER would
    commit on its own and a failed upgrade stay half done. SQLAlchemy's recipe: the driver keeps out of
    transactions, SQLAlchemy emits BEGIN itself."""

    @event.listens_for(engine, "connect")
    def no_driver_transactions(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


async def run_online() -> None:
    given = config.attributes.get("connection")
    engine = given if isinstance(given, AsyncEngine) else create_async_engine(database_url())
    owned = engine is not given
    if owned and engine.dialect.name == "sqlite":
        transactional_sqlite(engine.sync_engine)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_sync)
            await connection.commit()
    finally:
        if owned:
            await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
