"""What processing an order means, shared by the Celery worker and the embedded in-process bus.

Processing accepts a placed order into fulfilment: it stamps ``processed_at``, once. The status is left
alone (payment and shipping move it), so a canceled order is stamped too: its event was handled. Running
it again for the same order changes nothing, which makes duplicate events harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import cast
from uuid import UUID

import msgspec
import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.lib.db import autocommit_engine
from app.lib.outbox import Event
from app.orders.cache import OrderCache
from app.orders.events import decode_new_order
from app.orders.models import Order
from app.orders.schemas import OrderRead

log = structlog.get_logger(__name__)

_orders = cast("Table", Order.__table__)
# One conditional UPDATE ... RETURNING, on its own (autocommit): the condition makes it idempotent, and the
# whole processing costs one round trip to the database. Errors stay SQLAlchemy's, so that the worker can
# tell a lost connection (retry) from a bug (fail).
_STAMP = (
    update(_orders)
    .where(_orders.c.id == bindparam("order_id"), _orders.c.processed_at.is_(None))
    .values(processed_at=bindparam("now"), updated_at=bindparam("now"), version=_orders.c.version + 1)
    .returning(*(_orders.c[field] for field in OrderRead.__struct_fields__), _orders.c.version)
)
_EXISTS = select(_orders.c.id).where(_orders.c.id == bindparam("order_id"))


async def process_order(order_id: UUID, db: AsyncEngine, cache: OrderCache) -> bool:
    """Process the order; False (and no change) if it was processed before or does not exist.

    ``db`` is an engine in autocommit mode (``app.lib.db.autocommit_engine``).
    """
    async with db.connect() as connection:
        stamped = (await connection.execute(_STAMP, {"order_id": order_id, "now": datetime.now(UTC)})).first()
        if stamped is None:
            exists = await connection.scalar(_EXISTS, {"order_id": order_id})
            log.info(
                "order already processed" if exists else "order to process not found", order_id=str(order_id)
            )
            return False
    order = msgspec.convert(stamped, OrderRead, from_attributes=True)
    await cache.put_read(order, version=stamped.version)
    log.info("order processed", order_id=str(order_id), status=order.status.value)
    return True


def in_process_handler(db: SQLAlchemyAsyncConfig, cache: OrderCache) -> Callable[[Event], Awaitable[None]]:
    """Processing for the embedded default's in-process bus, where no broker and no worker run."""

    async def handle(message: Event) -> None:
        await process_order(decode_new_order(message.payload).order_id, autocommit_engine(db), cache)

    return handle
