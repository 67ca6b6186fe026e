"""The worker's Celery app and its tasks, which process the batches the consumer sends.

Each worker process runs its tasks' async code on one event loop of its own, with its own database pool and
Redis client, made on first use (after Celery forked the process).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from typing import Any, cast

import msgspec
import structlog
from celery import Celery, Task
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown
from sqlalchemy.exc import DBAPIError

from app.config import Settings
from app.messaging.task_queue import celery_app
from app.observability.logging import configure_logging
from app.observability.tracing import start_tracing, stop_tracing
from app.orders.cache import ORDER_CACHE_STORE, OrderCache
from app.orders.processing import PROCESS_ORDERS, OrderToProcess, process_orders
from app.storage.db import UNAVAILABLE_ERRORS, sqlalchemy_config
from app.storage.redis import create_redis
from app.storage.stores import AtomicStore, create_stores

log = structlog.get_logger(__name__)


def worker_app(settings: Settings) -> Celery:
    """The app the consumer sends tasks with (same broker, same queue), with what a worker adds: a task is
    never lost between broker and worker."""
    celery = celery_app(settings)
    celery.conf.update(
        accept_content=["json"],
        task_ignore_result=True,
        # Acknowledge after the task ran, and hand it back if the worker process dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task running when the broker connection is lost runs to its end (its commit, cache refresh and
        # log lines), though its ack can't be sent any more: RabbitMQ delivers the task again, which then
        # changes nothing. Cancelling it (Celery 6's default) could stop it between its commit and its cache
        # refresh, which the next run, finding the orders processed, would not make: a stale cache entry.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Each task is a batch of up to CONSUMER_BATCH_SIZE orders: one in hand per process beyond the one
        # running keeps every process busy.
        worker_prefetch_multiplier=2,
        # Processing waits on the database and Redis far more than it computes: more processes than CPUs.
        worker_concurrency=settings.worker_concurrency,
        broker_connection_retry_on_startup=True,
        # Task events cost RabbitMQ messages per task; Flower switches them on while it watches.
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return celery


settings = Settings.from_env()
celery = worker_app(settings)


@setup_logging.connect
def _logging(**_: Any) -> None:
    """Our structured logging instead of Celery's own, in the worker (Flower logs through tornado)."""
    configure_logging(level=settings.log_level, as_json=settings.log_as_json)


@worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    """Tracing starts in each pool process, after Celery forked it: the span processor's export thread
    would not survive the fork. The task span continues the context of the consumer's dispatch."""
    if start_tracing("worker"):  # PostgreSQL and Redis, and the trace ids on log lines
        from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415 - tracing on

        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]


@worker_process_shutdown.connect
def _flush_spans(**_: Any) -> None:
    """Export the spans still buffered: a pool process ends with ``os._exit``, which skips the SDK's own
    exit handler."""
    stop_tracing()


class ConnectionLost(Exception):
    """The database connection died during a statement. SQLAlchemy then raises a plain ``DBAPIError`` (for
    asyncpg's ConnectionDoesNotExistError or AdminShutdownError, say) with ``connection_invalidated`` set."""


TRANSIENT_ERRORS = (*UNAVAILABLE_ERRORS, ConnectionLost)
"""The database (or network) is unavailable for now; a task failing so is retried
with backoff (at most a minute apart) for as long as it takes: a task that gave up would be acknowledged,
and its order never processed. Any other error is a bug, and fails the task."""


class WorkerRuntime:
    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        # One task at a time per process, each a statement or two.
        self.db = sqlalchemy_config(settings.database_url, pool_size=2)
        redis = (
            create_redis(settings.redis_url, settings.redis_timeout_seconds) if settings.redis_url else None
        )
        store = create_stores(redis, settings.redis_key_prefix).get(ORDER_CACHE_STORE)
        self.cache = OrderCache(cast("AtomicStore", store), settings.cache_ttl_seconds)

    def process(self, batch: list[OrderToProcess], task_id: str | None) -> int:
        """Process the batch of task ``task_id`` on this process's event loop; how many orders it stamped."""
        work = process_orders(batch, self.db, self.cache)
        with structlog.contextvars.bound_contextvars(task_id=task_id):
            # In this context: the runner's own is a copy taken at its first run, which would give every
            # later task the log context (task id) of the first one.
            context = contextvars.copy_context()
        try:
            return len(self.runner.run(work, context=context))
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise ConnectionLost(str(exc)) from exc
            raise


@functools.cache
def runtime() -> WorkerRuntime:
    return WorkerRuntime()


RETRIED_WHILE_THE_DATABASE_IS_AWAY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}


@celery.task(name=PROCESS_ORDERS, bind=True, **RETRIED_WHILE_THE_DATABASE_IS_AWAY)
def process_orders_task(self: Task[[list[Any]], int], orders: list[Any]) -> int:
    """Process a batch of orders, ``[[order_id, request_id, traceparent], ...]`` (see app.orders.processing):
    one statement and one Redis pipeline for the batch; safe to run any number of times."""
    batch = msgspec.convert(orders, list[OrderToProcess], strict=False)
    return runtime().process(batch, self.request.id)
