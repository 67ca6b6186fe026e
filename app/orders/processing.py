"""What processing orders means, shared by the Celery worker and the embedded in-process bus, and the task
that asks for it: its name and its argument, as the consumer sends it and the worker runs it.

Processing accepts a placed order into fulfilment: it stamps ``processed_at``, once. The status is left
alone (payment and shipping move it), so a canceled order is stamped too: its event was handled. Running
it again for the same order changes nothing, which makes duplicate events harmless.

Orders come in batches: one UPDATE stamps them all and one Redis pipeline refreshes their cache entries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from uuid import UUID

import msgspec
import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

from app.messaging.broker import Event
from app.observability.tracing import current_traceparent, span
from app.orders.cache import OrderCache
from app.orders.events import decode_new_order
from app.orders.repositories import ChangedOrder, OrderRepository
from app.storage.db import autocommit_session

log = structlog.get_logger(__name__)

PROCESS_ORDERS = "orders.process_orders"
"""The Celery task of a batch, ``[[order_id, request_id, traceparent], ...]`` (``OrderToProcess``): sent by
the consumer (app.consumer), run by the worker's ``process_orders_task`` (app.worker.tasks)."""


class OrderToProcess(msgspec.Struct, frozen=True, array_like=True):
    """One order of a batch, with the id of the request that placed it (for the log lines) and the trace
    context its event was received in (W3C ``traceparent``), which its processing continues.

    Fields are only ever added at the end, with a default: a task of an earlier release still decodes."""

    order_id: UUID
    request_id: str | None = None
    traceparent: str | None = None


async def process_orders(
    batch: Sequence[OrderToProcess], db: SQLAlchemyAsyncConfig, cache: OrderCache
) -> list[ChangedOrder]:
    """Process the orders of ``batch``; those processed before, or unknown, are left as they are.

    The UPDATE commits as it runs (``autocommit_session`` is in autocommit mode, and a single statement is
    atomic on its own), so the cache is refreshed with committed rows only.

    Errors of the database stay SQLAlchemy's, so that the worker can tell a lost connection (retry) from a
    bug (fail). The orders it stamped are returned.

    Traced, the statement and the pipeline are the task's (the current span); each order then gets a
    ``process order`` span in its own trace, the request's, linked to the task's.
    """
    task = [traceparent] if (traceparent := current_traceparent()) else []  # the worker's task span
    order_ids = [item.order_id for item in batch]
    async with autocommit_session(db) as session:
        repository = OrderRepository(session=session)
        # The batch's commit: this one UPDATE, committed as it runs (an autocommit session).
        stamped = await repository.mark_processed(order_ids, datetime.now(UTC))
        done = {changed.order.id: changed.order for changed in stamped}
        missed = [order_id for order_id in order_ids if order_id not in done]
        existing = await repository.existing(missed) if missed else set()
    await cache.put_many(stamped)
    known = existing | done.keys()
    for item in batch:
        # In the order's own trace (its request's), linked to the batch's task; its log line carries it.
        order_id = str(item.order_id)
        with (
            span("process order", parent=item.traceparent, links=task, attributes={"order.id": order_id}),
            structlog.contextvars.bound_contextvars(request_id=item.request_id, order_id=order_id),
        ):
            if (order := done.pop(item.order_id, None)) is not None:  # popped: once for a duplicate in batch
                log.info("order processed", status=order.status.value)
            else:
                log.info(
                    "order already processed" if item.order_id in known else "order to process not found"
                )
    return stamped


def in_process_handler(
    db: SQLAlchemyAsyncConfig, cache: OrderCache
) -> Callable[[Sequence[Event]], Awaitable[None]]:
    """Processing for the embedded default's in-process bus, where no broker and no worker run."""

    async def handle(events: Sequence[Event]) -> None:
        batch = [  # each order processed in its request's trace, as the worker does
            OrderToProcess(decode_new_order(event.payload).order_id, event.request_id, event.trace_context)
            for event in events
        ]
        await process_orders(batch, db, cache)

    return handle
