"""The orders domain's operations. Every write refreshes the order's cache entry after its commit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import sqlalchemy.exc
from advanced_alchemy.filters import LimitOffset, OrderBy
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.di import NamedDependency
from litestar.params import SkipValidation
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.auth import Principal
from app.lib.errors import NotFoundError, UnprocessableError
from app.lib.logging import current_request_id
from app.lib.metrics import metric
from app.lib.outbox import Outbox
from app.orders.cache import OrderCache, to_read
from app.orders.events import new_order_message
from app.orders.models import Order, OrderIdempotencyKey, OrderStatus
from app.orders.repositories import IdempotencyKeyRepository, OrderRepository
from app.orders.schemas import OrderCreate, OrderRead
from app.orders.status import check_transition

NOT_FOUND = "No such order"
ORDERS_PLACED = Counter(metric("placed_total"), "Orders created (idempotent replays excluded)")


class OrderService(SQLAlchemyAsyncRepositoryService[Order, OrderRepository]):
    repository_type = OrderRepository

    def __init__(self, session: AsyncSession, *, cache: OrderCache, outbox: Outbox, **kwargs: Any) -> None:
        super().__init__(session=session, **kwargs)
        self.cache = cache
        self.outbox = outbox

    async def place(
        self, user_id: UUID, data: OrderCreate, idempotency_key: str | None
    ) -> tuple[OrderRead, bool]:
        """Create the order and its ``new_order`` event in one transaction, then publish the event.

        For a key already used in the last 24 h, create nothing and return that key's order (and True).
        """
        session = self.repository.session
        keys = IdempotencyKeyRepository(session=session)
        fingerprint = data.fingerprint()
        remembered = (
            await keys.get_one_or_none(user_id=user_id, key=idempotency_key) if idempotency_key else None
        )
        if remembered is not None and remembered.is_live():
            return await self._replay(remembered, fingerprint), True

        order = await self.repository.add(
            Order(user_id=user_id, items=msgspec.to_builtins(data.items), total_price=data.total)
        )
        event = new_order_message(order, current_request_id())
        session.add(event)
        if idempotency_key is not None:
            if remembered is None:
                remembered = OrderIdempotencyKey(user_id=user_id, key=idempotency_key)
                session.add(remembered)
            # a new record, or the key's expired one taken over
            remembered.fingerprint = fingerprint
            remembered.order_id = order.id
            remembered.created_at = datetime.now(UTC)
            try:
                await session.flush()
            except sqlalchemy.exc.IntegrityError:  # a concurrent request with this key committed first
                await session.rollback()
                first = await keys.get_one(user_id=user_id, key=idempotency_key)
                return await self._replay(first, fingerprint), True
        await session.commit()
        ORDERS_PLACED.inc()
        placed = await self.cache.put(order)
        await self.outbox.publish_committed(session, event)
        return placed, False

    async def read(self, principal: Principal, order_id: UUID) -> OrderRead:
        """The order if the caller may see it; another user's order is as absent as an unknown one."""
        order = await self.cache.get_or_load(order_id, lambda: self.get_one_or_none(id=order_id))
        if order is None or not principal.may_access(order.user_id):
            raise NotFoundError(NOT_FOUND)
        return order

    async def change_status(self, principal: Principal, order_id: UUID, status: OrderStatus) -> OrderRead:
        order = await self.get_one_or_none(id=order_id, with_for_update=True)
        if order is None or not principal.may_access(order.user_id):
            raise NotFoundError(NOT_FOUND)
        check_transition(order.status, status)
        order.status = status
        order = await self.update(order, auto_commit=True)
        return await self.cache.put(order)

    async def page(self, user_id: UUID, limit: int, offset: int) -> tuple[list[OrderRead], int]:
        """One page of the user's orders, newest first, and how many there are in all."""
        orders, total = await self.get_many_and_count(
            LimitOffset(limit=limit, offset=offset),
            OrderBy("created_at", "desc"),
            OrderBy("id", "desc"),
            user_id=user_id,
        )
        return [to_read(order) for order in orders], total

    async def _replay(self, remembered: OrderIdempotencyKey, fingerprint: str) -> OrderRead:
        if remembered.fingerprint != fingerprint:
            raise UnprocessableError("This Idempotency-Key was already used with a different request body")
        return to_read(await self.get(remembered.order_id))


async def provide_orders(
    db_session: NamedDependency[SkipValidation[AsyncSession]],
    order_cache: NamedDependency[SkipValidation[OrderCache]],
    outbox: NamedDependency[SkipValidation[Outbox]],
) -> OrderService:
    """The request's order service: its database session, the shared cache and the outbox."""
    return OrderService(session=db_session, cache=order_cache, outbox=outbox)
