"""The orders domain's operations. Every change of an order refreshes its cache entry after its commit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from advanced_alchemy.filters import ComparisonFilter, StatementFilter
from prometheus_client import Counter
from sqlalchemy import select
from uuid_utils.compat import uuid7

from app.accounts.auth import Principal
from app.messaging.outbox import Outbox
from app.observability.logging import current_request_id
from app.observability.metrics import metric
from app.orders.cache import OrderCache, to_read
from app.orders.events import new_order_message
from app.orders.models import Order, OrderIdempotencyKey, OrderStatus
from app.orders.repositories import (
    IdempotencyClaim,
    IdempotencyKeyRepository,
    Older,
    OrderRepository,
    Page,
    read_filtered_page,
    read_page,
    read_page_after,
)
from app.orders.schemas import OrderCreate, OrderRead, Position
from app.orders.status import check_transition
from app.storage.db import autocommit_engine, autocommit_session, read_retrying
from app.web.errors import ConflictError, NotFoundError, UnprocessableError

NOT_FOUND = "No such order"
ORDERS_PLACED = Counter(metric("placed_total"), "Orders created (idempotent replays excluded)")


class OrderService:
    """The order writes, one instance for every request of the process, like ``OrderReader``.

    Each write is one statement, on a session of its own in autocommit mode (no BEGIN and COMMIT round trips
    around it) that gives its connection back at once. Built per request as an advanced-alchemy service
    instead, with the repository it makes and the dependency's cleanup, it cost a create's request handling
    a measurable share of its CPU (bench/RESULTS.md, Hand-written parts).
    """

    def __init__(
        self,
        db: SQLAlchemyAsyncConfig,
        cache: OrderCache,
        outbox: Outbox,
        idempotency_key_lifetime: timedelta,
    ) -> None:
        self.db = db
        self.cache = cache
        self.outbox = outbox
        self.idempotency_key_lifetime = idempotency_key_lifetime

    @asynccontextmanager
    async def _orders(self) -> AsyncIterator[OrderRepository]:
        """The repository on a session of its own; what it wrote is committed when the block ends (SQLite's
        transaction: in autocommit mode on PostgreSQL there is nothing to send)."""
        async with autocommit_session(self.db) as session:
            yield OrderRepository(session=session, statement=_ORDERS)
            await session.commit()

    async def place(
        self, user_id: UUID, data: OrderCreate, idempotency_key: str | None
    ) -> tuple[OrderRead, bool]:
        """Create the order with its ``new_order`` event (one statement), then publish the event.

        For a key used within its lifetime (IDEMPOTENCY_KEY_TTL_SECONDS), create nothing and return that
        key's order (and True).
        """
        now = datetime.now(UTC)
        order = OrderRead(
            id=uuid7(),
            user_id=user_id,
            items=tuple(data.items),
            total_price=data.total,
            status=OrderStatus.PENDING,
            created_at=now,
            updated_at=now,
            processed_at=None,
        )
        event = new_order_message(order, current_request_id())
        claim = (
            IdempotencyClaim(idempotency_key, data.fingerprint(), self.idempotency_key_lifetime)
            if idempotency_key
            else None
        )
        async with self._orders() as orders:
            if not await orders.place(order, event, claim):
                assert claim is not None  # only a key already taken refuses an order
                return await _replay(orders, user_id, claim), True
        ORDERS_PLACED.inc()
        self.outbox.dispatch(event)
        # No cache entry yet: its processing writes one within moments, and a read before that is a miss
        # that reads the row (there is no older entry of a new order to replace).
        return order, False

    async def change_status(self, principal: Principal, order_id: UUID, status: OrderStatus) -> OrderRead:
        """Move the order to ``status``: one conditional UPDATE, which touches nothing the caller may not
        change; only when it changed nothing, a read of the order says why (404, or 409 naming its status).
        A status that changed in between is checked again, on the fresh row."""
        owner = None if principal.is_admin else principal.user_id
        for _ in range(3):
            async with self._orders() as orders:
                changed = await orders.change_status(order_id, status, owner, datetime.now(UTC))
                current = await orders.get_one_or_none(id=order_id) if changed is None else None
            if changed is not None:
                await self.cache.put_read(changed.order, changed.version)
                return changed.order
            if current is None or not principal.may_access(current.user_id):
                raise NotFoundError(NOT_FOUND)
            check_transition(current.status, status)
        raise ConflictError("The order kept changing while it was being updated; try again")


async def _replay(orders: OrderRepository, user_id: UUID, claim: IdempotencyClaim) -> OrderRead:
    """The order that the key's first request created, if this request's body is the same."""
    keys = IdempotencyKeyRepository(session=orders.session, statement=_IDEMPOTENCY_KEYS)
    remembered = await keys.get_one(user_id=user_id, key=claim.key)
    if remembered.fingerprint != claim.fingerprint:
        raise UnprocessableError("This Idempotency-Key was already used with a different request body")
    return to_read(await orders.get(remembered.order_id))


# The repositories' base statements, built once instead of per request.
_ORDERS = select(Order)
_IDEMPOTENCY_KEYS = select(OrderIdempotencyKey)


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

    async def page(
        self,
        owner: UUID | None,
        filters: Sequence[StatementFilter],
        limit: int,
        offset: int = 0,
        after: Position | None = None,
        *,
        count: bool = True,
    ) -> Page:
        """A page of the owner's orders (everyone's for None) that ``filters`` select, newest first, from
        ``offset`` or past ``after``; with how many they select in all if ``count``.

        The plainest pages, the hottest, are precompiled statements: a user's orders without filters, counted
        from an offset (``read_page``), or past a cursor (``read_page_after``).
        """

        async def read() -> Page:
            async with autocommit_engine(self.db).connect() as connection:
                if owner is not None and not filters and after is None and count:
                    orders, total = await read_page(connection, owner, limit, offset)
                    return Page(orders, total, offset + len(orders) < total)
                if owner is not None and not filters and after is not None and not count and not offset:
                    return await read_page_after(connection, owner, after, limit)
                conditions = _conditions(owner, filters, after)
                return await read_filtered_page(connection, conditions, limit, offset, count=count)

        return await read_retrying(read)

    async def _load(self, order_id: UUID) -> Order | None:
        async def read() -> Order | None:
            async with autocommit_session(self.db) as session:
                return await OrderRepository(session=session).get_one_or_none(id=order_id)

        return await read_retrying(read)


def _conditions(
    owner: UUID | None, filters: Sequence[StatementFilter], after: Position | None
) -> list[StatementFilter]:
    """What selects a page's orders: the owner's (if any), the filters, and past the cursor (if any)."""
    owned = [ComparisonFilter("user_id", "eq", owner)] if owner is not None else []
    return [*owned, *filters, *([Older(after)] if after is not None else [])]
