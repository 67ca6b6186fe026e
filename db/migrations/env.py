"""Alembic environment: plain `alembic upgrade head` against DATABASE_URL, each run in one transaction."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from advanced_alchemy.base import orm_registry
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import app.accounts.models
import app.lib.outbox
import app.orders.models  # noqa: F401 - importing the models registers their tables
from app.config import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = orm_registry.metadata


def database_url() -> str:
    return config.attributes.get("database_url") or Settings.from_env().database_url


def configure(**options: object) -> None:
    url = database_url()
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=url.startswith("sqlite"),  # SQLite alters tables by copying them
        compare_type=True,
        transaction_per_migration=False,  # one transaction for the whole upgrade
        **options,
    )


def run_offline() -> None:
    configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_sync(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
