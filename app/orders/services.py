"""The orders domain's operations. Every write refreshes the order's cache entry after its commit."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import sqlalchemy.exc
from advanced_alchemy.exceptions import RepositoryError
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.di import NamedDependency
from litestar.params import SkipValidation
from prometheus_client import Counter
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError
from uuid_utils.compat import uuid7

from app.accounts.auth import Principal
from app.lib.errors import NotFoundError, UnprocessableError
from app.lib.logging import current_request_id
from app.lib.metrics import metric
from app.lib.outbox import Outbox, OutboxMessage
from app.orders.cache import OrderCache, to_read
from app.orders.events import new_order_message
from app.orders.models import Order, OrderIdempotencyKey, OrderStatus
from app.orders.repositories import IdempotencyKeyRepository, OrderRepository
from app.orders.schemas import OrderCreate, OrderRead
from app.orders.status import check_transition

NOT_FOUND = "No such order"
_NATIVE = (datetime, UUID, Decimal)  # kept as they are when a schema becomes column values
ORDERS_PLACED = Counter(metric("placed_total"), "Orders created (idempotent replays excluded)")
STATUS_CHANGE_ATTEMPTS = 3


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

        # Plain INSERTs rather than the ORM's unit of work: the rows are new and complete, nothing is read
        # back, and on this path the ORM's bookkeeping cost more CPU than the rest of the request together.
        now = datetime.now(UTC)
        order = OrderRead(
            id=uuid7(),
            user_id=user_id,
            items=data.items,
            total_price=data.total,
            status=OrderStatus.PENDING,
            created_at=now,
            updated_at=now,
            processed_at=None,
        )
        event = new_order_message(order, current_request_id())
        columns = msgspec.to_builtins(order, builtin_types=_NATIVE)
        await session.execute(insert(Order).values(**columns, version=1))
        await session.execute(insert(OutboxMessage).values(_columns(event)))
        if idempotency_key is not None:
            record = {"fingerprint": fingerprint, "order_id": order.id, "created_at": now}
            try:
                if remembered is None:
                    await session.execute(
                        insert(OrderIdempotencyKey).values(user_id=user_id, key=idempotency_key, **record)
                    )
                else:  # the key's expired record, taken over
                    await session.execute(
                        update(OrderIdempotencyKey)
                        .where(
                            OrderIdempotencyKey.user_id == user_id, OrderIdempotencyKey.key == idempotency_key
                        )
                        .values(**record)
                    )
            except sqlalchemy.exc.IntegrityError:  # a concurrent request with this key committed first
                await session.rollback()
                first = await keys.get_one(user_id=user_id, key=idempotency_key)
                return await self._replay(first, fingerprint), True
        await session.commit()
        ORDERS_PLACED.inc()
        self.outbox.dispatch(event)
        await self.cache.put_read(order, version=1)
        return order, False

    async def change_status(self, principal: Principal, order_id: UUID, status: OrderStatus) -> OrderRead:
        """Move the order to ``status``, on the row as it is when the change commits.

        PostgreSQL locks the row from the read to the commit. SQLite has no row locks: a write committed in
        between (the embedded default processes orders in the API process) makes the versioned UPDATE match
        no row, and the change is then checked and made again on the row as it is now.
        """
        attempt = 1
        while True:
            order = await self.get_one_or_none(id=order_id, with_for_update=True)
            if order is None or not principal.may_access(order.user_id):
                raise NotFoundError(NOT_FOUND)
            check_transition(order.status, status)
            order.status = status
            try:
                order = await self.update(order, auto_commit=True)
            except RepositoryError as exc:
                if not isinstance(exc.__cause__, StaleDataError) or attempt == STATUS_CHANGE_ATTEMPTS:
                    raise
                await self.repository.session.rollback()
                attempt += 1
            else:
                return await self.cache.put(order)

    async def page(self, user_id: UUID, limit: int, offset: int) -> tuple[list[OrderRead], int]:
        """One page of the user's orders, newest first, and how many there are in all.

        Columns straight into the schema: building ORM objects for a page costs several times the query
        itself, and none of them would be changed. Both statements are built once, so SQLAlchemy's statement
        cache key is computed once too. The count is its own query (an index-only scan): a window count in
        the page query would make PostgreSQL read every order of the user to return twenty.
        """
        session = self.repository.session
        parameters = {"user_id": user_id, "limit": limit, "offset": offset}
        rows = (await session.execute(_PAGE, parameters)).mappings().all()
        total = await session.scalar(_COUNT, parameters) if rows or offset else 0
        return msgspec.convert([dict(row) for row in rows], list[OrderRead]), total or 0

    async def _replay(self, remembered: OrderIdempotencyKey, fingerprint: str) -> OrderRead:
        if remembered.fingerprint != fingerprint:
            raise UnprocessableError("This Idempotency-Key was already used with a different request body")
        return to_read(await self.get(remembered.order_id))


_PAGE = (
    select(*(getattr(Order, field) for field in OrderRead.__struct_fields__))
    .where(Order.user_id == bindparam("user_id"))
    .order_by(Order.created_at.desc(), Order.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_COUNT = select(func.count()).select_from(Order).where(Order.user_id == bindparam("user_id"))


class OrderReader:
    """Reads single orders: from the cache, and on a miss from the database, in a session opened just then.

    The hottest path of the API, so a cache hit makes no database session at all.
    """

    def __init__(self, cache: OrderCache, db: SQLAlchemyAsyncConfig) -> None:
        self.cache = cache
        self.db = db

    async def read(
        self, principal: Principal, order_id: UUID, read_ahead: Mapping[str, bytes | None] | None = None
    ) -> OrderRead:
        """The order if the caller may see it; another user's order is as absent as an unknown one."""
        order = await self.cache.get_or_load(order_id, lambda: self._load(order_id), read_ahead)
        if order is None or not principal.may_access(order.user_id):
            raise NotFoundError(NOT_FOUND)
        return order

    async def _load(self, order_id: UUID) -> Order | None:
        async with self.db.get_session() as session:
            return await OrderRepository(session=session).get_one_or_none(id=order_id)


async def provide_orders(
    db_session: NamedDependency[SkipValidation[AsyncSession]],
    order_cache: NamedDependency[SkipValidation[OrderCache]],
    outbox: NamedDependency[SkipValidation[Outbox]],
) -> OrderService:
    """The request's order service: its database session, the shared cache and the outbox."""
    return OrderService(session=db_session, cache=order_cache, outbox=outbox)


def _columns(message: OutboxMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "topic": message.topic,
        "payload": message.payload,
        "request_id": message.request_id,
        "created_at": message.created_at,
    }
