"""The tasks. Each worker process runs its tasks' async code on one event loop of its own, with its own
database pool and Redis client, made on first use (after Celery forked the process)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Coroutine
from typing import Any, TypeVar, cast
from uuid import UUID

import asyncpg  # type: ignore[import-untyped]  # no stubs; only its exception classes are used
import structlog
from celery import Task
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.lib.db import autocommit_engine, sqlalchemy_config
from app.lib.redis import create_redis
from app.lib.stores import AtomicStore, create_stores
from app.orders.cache import ORDER_CACHE_STORE, OrderCache
from app.orders.processing import process_order as process
from app.worker import celery, settings
from app.worker.config import PROCESS_ORDER

log = structlog.get_logger(__name__)
T = TypeVar("T")


class ConnectionLost(Exception):
    """The database connection died during a statement. SQLAlchemy then raises a plain ``DBAPIError`` (for
    asyncpg's ConnectionDoesNotExistError or AdminShutdownError, say) with ``connection_invalidated`` set."""


TRANSIENT_ERRORS = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    OSError,
    TimeoutError,
    ConnectionLost,
    # SQLAlchemy 2.0 wraps asyncpg's errors of statements, not those raised while connecting: these reach the
    # task as asyncpg raised them.
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was closed
    asyncpg.exceptions.OperatorInterventionError,  # class 57: starting up, shutting down, terminated
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, out of memory or disk
)
"""Errors that mean the database (or network) is unavailable for now; a task failing with one is retried
with backoff (at most a minute apart) for as long as it takes: a task that gave up would be acknowledged,
and its order never processed. Any other error is a bug, and fails the task."""


class WorkerRuntime:
    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        # One task at a time per process, each a single statement.
        self.db = autocommit_engine(sqlalchemy_config(settings.database_url, pool_size=2))
        redis = (
            create_redis(settings.redis_url, settings.redis_timeout_seconds) if settings.redis_url else None
        )
        store = create_stores(redis, settings.redis_key_prefix).get(ORDER_CACHE_STORE)
        self.cache = OrderCache(cast("AtomicStore", store), settings.cache_ttl_seconds)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        # In the caller's context: the runner's own is a copy taken at its first run, which would give every
        # later task the log context (request id) of the first one.
        return self.runner.run(work, context=contextvars.copy_context())


@functools.cache
def runtime() -> WorkerRuntime:
    return WorkerRuntime()


@celery.task(
    name=PROCESS_ORDER,
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def process_order(self: Task[[str], bool], order_id: str) -> bool:
    """Process the order (see app.orders.processing); safe to run any number of times."""
    with structlog.contextvars.bound_contextvars(
        request_id=self.request.get("request_id"), task_id=self.request.id, order_id=order_id
    ):
        try:
            return runtime().run(_process(UUID(order_id)))
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise ConnectionLost(str(exc)) from exc
            raise


async def _process(order_id: UUID) -> bool:
    worker = runtime()
    return await process(order_id, worker.db, worker.cache)
