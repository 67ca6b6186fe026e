"""What processing an order means, shared by the Celery worker and the embedded in-process bus.

Processing accepts a placed order into fulfilment: it stamps ``processed_at``, once. The status is left
alone (payment and shipping move it), so a canceled order is stamped too: its event was handled. Running
it again for the same order changes nothing, which makes duplicate events harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy.ext.asyncio import AsyncSession

from app.lib.outbox import OutboxMessage
from app.orders.cache import OrderCache
from app.orders.events import decode_new_order
from app.orders.repositories import OrderRepository

log = structlog.get_logger(__name__)


async def process_order(order_id: UUID, session: AsyncSession, cache: OrderCache) -> bool:
    """Process the order; False (and no change) if it was processed before or does not exist."""
    # Unwrapped errors, so that the worker can tell a lost connection (retry) from a bug (fail).
    orders = OrderRepository(session=session, wrap_exceptions=False)
    order = await orders.get_one_or_none(id=order_id, with_for_update=True)
    if order is None:
        log.warning("order to process not found", order_id=str(order_id))
        return False
    if order.processed_at is not None:
        log.info("order already processed", order_id=str(order_id))
        return False
    order.processed_at = datetime.now(UTC)
    await session.commit()
    await cache.put(order)
    log.info("order processed", order_id=str(order_id), status=order.status.value)
    return True


def in_process_handler(
    db: SQLAlchemyAsyncConfig, cache: OrderCache
) -> Callable[[OutboxMessage], Awaitable[None]]:
    """Processing for the embedded default's in-process bus, where no broker and no worker run."""

    async def handle(message: OutboxMessage) -> None:
        event = decode_new_order(message.payload)
        async with db.get_session() as session:
            await process_order(event.order_id, session, cache)

    return handle
