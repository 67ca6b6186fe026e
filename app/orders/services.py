"""The orders domain's operations. Every write refreshes the order's cache entry after its commit."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import msgspec
import sqlalchemy.exc
from advanced_alchemy.exceptions import RepositoryError
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation
from prometheus_client import Counter
from sqlalchemy import CursorResult, Table, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError
from uuid_utils.compat import uuid7

from app.accounts.auth import Principal
from app.lib.db import autocommit_engine, statement_session
from app.lib.errors import ConflictError, NotFoundError, UnprocessableError
from app.lib.logging import current_request_id
from app.lib.metrics import metric
from app.lib.outbox import INSERT_EVENT, Outbox
from app.orders.cache import OrderCache, to_read
from app.orders.events import new_order_message
from app.orders.models import Order, OrderIdempotencyKey, OrderStatus
from app.orders.repositories import IdempotencyKeyRepository, OrderRepository
from app.orders.schemas import OrderCreate, OrderRead
from app.orders.status import check_transition

NOT_FOUND = "No such order"
_NATIVE = (datetime, UUID, Decimal)  # kept as they are when a schema becomes column values
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
        keys = IdempotencyKeyRepository(session=session, statement=_IDEMPOTENCY_KEYS)
        remembered = (
            await keys.get_one_or_none(user_id=user_id, key=idempotency_key) if idempotency_key else None
        )
        if remembered is not None and remembered.is_live():
            return await self._replay(remembered, data), True

        # Prebuilt table INSERTs rather than the ORM's unit of work: the rows are new and complete, nothing
        # is read back, and on this path the ORM's bookkeeping cost more CPU than the rest of the request.
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
        await session.execute(_INSERT_ORDER, {**columns, "version": 1})
        await session.execute(INSERT_EVENT, msgspec.structs.asdict(event))
        if idempotency_key is not None:
            record = {"fingerprint": data.fingerprint(), "order_id": order.id, "created_at": now}
            try:
                if remembered is None:
                    await session.execute(
                        insert(OrderIdempotencyKey).values(user_id=user_id, key=idempotency_key, **record)
                    )
                    first_with_key = True
                else:  # the key's expired record, taken over unless a concurrent request took it over first
                    taken_over = await session.execute(
                        update(OrderIdempotencyKey)
                        .where(
                            OrderIdempotencyKey.user_id == user_id,
                            OrderIdempotencyKey.key == idempotency_key,
                            OrderIdempotencyKey.created_at == remembered.created_at,
                        )
                        .values(**record)
                    )
                    first_with_key = cast("CursorResult[Any]", taken_over).rowcount == 1
            except sqlalchemy.exc.IntegrityError:
                first_with_key = False
            if not first_with_key:  # a concurrent request with this key committed first
                await session.rollback()
                first = await keys.get_one(user_id=user_id, key=idempotency_key)
                return await self._replay(first, data), True
        await session.commit()
        ORDERS_PLACED.inc()
        self.outbox.dispatch(event)
        await self.cache.put_read(order, version=1)
        return order, False

    async def change_status(self, principal: Principal, order_id: UUID, status: OrderStatus) -> OrderRead:
        """Move the order to ``status``. The row is locked on PostgreSQL; SQLite locks nothing, so there a
        write that committed in between (the order's processing, on the embedded default) shows up as a
        version conflict, and the change is checked and made again on the fresh row."""
        for _ in range(3):
            order = await self.get_one_or_none(id=order_id, with_for_update=True)
            if order is None or not principal.may_access(order.user_id):
                raise NotFoundError(NOT_FOUND)
            check_transition(order.status, status)
            order.status = status
            try:
                order = await self.update(order, auto_commit=True)
            except RepositoryError as exc:
                if not isinstance(exc.__cause__, StaleDataError):
                    raise
                await self.repository.session.rollback()
                continue
            return await self.cache.put(order)
        raise ConflictError("The order kept changing while it was being updated; try again")

    async def _replay(self, remembered: OrderIdempotencyKey, data: OrderCreate) -> OrderRead:
        if remembered.fingerprint != data.fingerprint():
            raise UnprocessableError("This Idempotency-Key was already used with a different request body")
        return to_read(await self.get(remembered.order_id))


# The repositories' base statements, built once instead of per request.
_ORDERS = select(Order)
_IDEMPOTENCY_KEYS = select(OrderIdempotencyKey)
_INSERT_ORDER = insert(cast("Table", Order.__table__))  # the table: no ORM bookkeeping
_TOTAL = select(func.count()).select_from(Order).where(Order.user_id == bindparam("user_id"))
# The total rides along as an uncorrelated subquery, which the database evaluates once per query.
_PAGE = (
    select(*(getattr(Order, field) for field in OrderRead.__struct_fields__), _TOTAL.scalar_subquery())
    .where(Order.user_id == bindparam("user_id"))
    .order_by(Order.created_at.desc(), Order.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)


class OrderReader:
    """Reads: single orders from the cache (on a miss from the database), and pages of a user's orders.

    The hottest paths of the API, so none of them opens a request's session: a cache hit touches no
    database at all, and a page is one query on a connection in autocommit mode (no BEGIN and COMMIT round
    trips; a single statement sees one snapshot anyway).
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

    async def page(self, user_id: UUID, limit: int, offset: int) -> tuple[list[OrderRead], int]:
        """One page of the user's orders, newest first, and how many there are in all.

        Columns go straight into the schema: building ORM objects for a page costs several times the query
        itself, and none of them would be changed.
        """
        parameters = {"user_id": user_id, "limit": limit, "offset": offset}
        async with autocommit_engine(self.db).connect() as connection:
            rows = (await connection.execute(_PAGE, parameters)).all()
            if not rows:  # past the last page, the total has no row to ride on
                return [], await connection.scalar(_TOTAL, parameters) or 0
        return msgspec.convert(rows, list[OrderRead], from_attributes=True), rows[0][-1]

    async def _load(self, order_id: UUID) -> Order | None:
        async with statement_session(self.db) as session:
            return await OrderRepository(session=session).get_one_or_none(id=order_id)


def order_service_provider(cache: OrderCache, outbox: Outbox) -> Provide:
    """The request's order service: its database session, and the process's cache and outbox.

    The cache and the outbox are bound here rather than injected: with the session as its only dependency,
    Litestar resolves the service directly instead of gathering three dependencies in a task group, which
    cost more than the rest of the dependency injection together.
    """

    async def provide_orders(db_session: NamedDependency[SkipValidation[AsyncSession]]) -> OrderService:
        return OrderService(session=db_session, cache=cache, outbox=outbox, statement=_ORDERS)

    return Provide(provide_orders)
