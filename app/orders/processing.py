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
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.lib.outbox import Event
from app.orders.cache import OrderCache
from app.orders.events import decode_new_order
from app.orders.models import Order

log = structlog.get_logger(__name__)


async def process_order(order_id: UUID, session: AsyncSession, cache: OrderCache) -> bool:
    """Process the order; False (and no change) if it was processed before or does not exist."""
    # One conditional UPDATE ... RETURNING instead of a locked read, an update and a commit's worth of ORM
    # bookkeeping: the condition makes it idempotent, and it costs one round trip. Errors stay SQLAlchemy's,
    # so that the worker can tell a lost connection (retry) from a bug (fail).
    stamp = (
        update(Order)
        .where(Order.id == order_id, Order.processed_at.is_(None))
        .values(processed_at=datetime.now(UTC), updated_at=datetime.now(UTC), version=Order.version + 1)
        .returning(Order)
        .execution_options(synchronize_session=False)
    )
    order = (await session.scalars(stamp)).one_or_none()
    await session.commit()
    if order is None:
        exists = await session.scalar(select(Order.id).where(Order.id == order_id))
        log.info(
            "order already processed" if exists else "order to process not found", order_id=str(order_id)
        )
        return False
    await cache.put(order)
    log.info("order processed", order_id=str(order_id), status=order.status.value)
    return True


def in_process_handler(db: SQLAlchemyAsyncConfig, cache: OrderCache) -> Callable[[Event], Awaitable[None]]:
    """Processing for the embedded default's in-process bus, where no broker and no worker run."""

    async def handle(message: Event) -> None:
        event = decode_new_order(message.payload)
        async with db.get_session() as session:
            await process_order(event.order_id, session, cache)

    return handle
