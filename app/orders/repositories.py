"""Repositories of the orders domain, and every statement against its tables.

Every write of an order is a method of ``OrderRepository``, each a single statement on PostgreSQL (one round
trip on a connection in autocommit mode, atomic on its own), and every change goes through ``_changed``,
which moves ``version`` and ``updated_at`` together: the cache keeps only the newest version of an order.
The page of a user's orders, the hottest read, is ``read_page``. Statements are built once; SQLAlchemy
caches their compiled form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, cast
from uuid import UUID

import msgspec
from advanced_alchemy.filters import LimitOffset, OrderBy, StatementFilter
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import (
    ColumnElement,
    Insert,
    Row,
    Select,
    Table,
    Text,
    Update,
    bindparam,
    func,
    insert,
    literal,
    null,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from app.messaging.broker import Event
from app.messaging.outbox import OutboxMessage
from app.orders.models import Order, OrderIdempotencyKey, OrderStatus
from app.orders.schemas import OrderItem, OrderRead, Position
from app.orders.status import sources_of
from app.storage.db import connection_lost

_orders = cast("Table", Order.__table__)
_outbox = cast("Table", OutboxMessage.__table__)
_keys = cast("Table", OrderIdempotencyKey.__table__)
_ORDER_FIELDS = OrderRead.__struct_fields__
_NATIVE = (datetime, UUID, Decimal)  # kept as they are when an order becomes column values


class IdempotencyClaim(NamedTuple):
    """An ``Idempotency-Key`` to record with a new order, the fingerprint of the request's body, and how
    long the key holds."""

    key: str
    fingerprint: str
    lifetime: timedelta


class ChangedOrder(NamedTuple):
    """An order as a write left it, and its new version."""

    order: OrderRead
    version: int


class OrderRepository(SQLAlchemyAsyncRepository[Order]):
    model_type = Order

    async def place(self, order: OrderRead, event: Event, claim: IdempotencyClaim | None) -> bool:
        """Insert the new order and its outbox event, and record ``claim``: all of it, or nothing (and False)
        when the user's key is already recorded for another order within the idempotency window.

        An expired record of the key is taken over. Concurrent claims of one key wait for each other in the
        unique index: one wins, the others write nothing.
        """
        values = _place_values(order, event, claim)
        if self._dialect.name == "postgresql":
            placed = await self.session.execute(_PLACE_CLAIMING if claim else _PLACE, values)
            return placed.first() is not None
        # SQLite (the embedded default) has no INSERT inside WITH; a local file needs no round trips saved.
        async with self.session.begin_nested() as transaction:
            await self.session.execute(_INSERT_ORDER, values)
            await self.session.execute(_INSERT_EVENT, values)
            if claim is not None and (await self.session.execute(_CLAIM_SQLITE, values)).first() is None:
                await transaction.rollback()
                return False
        return True

    async def change_status(
        self, order_id: UUID, status: OrderStatus, owner: UUID | None, now: datetime
    ) -> ChangedOrder | None:
        """Move the order to ``status`` if its status machine allows it from the current one (and, unless
        ``owner`` is None, if it is theirs); None, and no change, if not."""
        values = {"order_id": order_id, "status": status, "sources": sources_of(status), "now": now}
        if owner is None:
            row = (await self.session.execute(_CHANGE_STATUS, values)).first()
        else:
            row = (await self.session.execute(_CHANGE_OWN_STATUS, {**values, "owner": owner})).first()
        return _changed_order(row) if row is not None else None

    async def mark_processed(self, order_ids: Sequence[UUID], now: datetime) -> list[ChangedOrder]:
        """Stamp ``processed_at`` on those of the orders not processed yet; the orders it stamped."""
        rows = await self.session.execute(_STAMP, {"order_ids": list(order_ids), "now": now})
        return [_changed_order(row) for row in rows]

    async def existing(self, order_ids: Sequence[UUID]) -> set[UUID]:
        """Which of ``order_ids`` exist."""
        rows = await self.session.execute(_EXISTING, {"order_ids": list(order_ids)})
        return set(rows.scalars())


class IdempotencyKeyRepository(SQLAlchemyAsyncRepository[OrderIdempotencyKey]):
    model_type = OrderIdempotencyKey


def _bound(table: Table, prefix: str = "", **fixed: Any) -> dict[str, Any]:
    """Column name -> a bind parameter named ``<prefix><column>`` of the column's type (``fixed`` values
    instead where given): the values of a row that one statement writes beside others."""
    return {
        column.name: fixed.get(column.name, bindparam(f"{prefix}{column.name}", type_=column.type))
        for column in table.columns
        if column.name in fixed or column.name in _WRITTEN[table.name]
    }


_WRITTEN = {
    "orders": {*_ORDER_FIELDS, "version"} - {"processed_at"},
    "outbox": set(Event.__struct_fields__),
    "order_idempotency_key": {"user_id", "key", "fingerprint", "order_id", "created_at"},
}
_ORDER_VALUES = _bound(_orders)
_EVENT_VALUES = _bound(_outbox, "event_")
_KEY_VALUES = _bound(_keys, "key_", user_id=_ORDER_VALUES["user_id"], order_id=_ORDER_VALUES["id"])


def _place_values(order: OrderRead, event: Event, claim: IdempotencyClaim | None) -> dict[str, Any]:
    values: dict[str, Any] = msgspec.to_builtins(order, builtin_types=_NATIVE)
    del values["processed_at"]  # SQLAlchemy would add a column to the INSERT for each key named like one
    values.update(version=1, **{f"event_{name}": getattr(event, name) for name in Event.__struct_fields__})
    if claim is not None:
        values.update(
            key_key=claim.key,
            key_fingerprint=claim.fingerprint,
            key_created_at=order.created_at,
            expired_before=order.created_at - claim.lifetime,
        )
    return values


def _claim(dialect_insert: Callable[[Table], Any]) -> Insert:
    """Record the key for the new order, or take over its expired record; returns the row it wrote."""
    statement = dialect_insert(_keys).values(_KEY_VALUES)
    return cast(
        "Insert",
        statement.on_conflict_do_update(
            index_elements=[_keys.c.user_id, _keys.c.key],
            set_={name: statement.excluded[name] for name in ("fingerprint", "order_id", "created_at")},
            where=_keys.c.created_at <= bindparam("expired_before", type_=_keys.c.created_at.type),
        ).returning(_keys.c.order_id),
    )


def _insert_after(table: Table, values: dict[str, Any], gate: Any) -> Insert:
    """INSERT the row of ``values`` for each row of ``gate`` (a CTE): none if the gate wrote none."""
    return insert(table).from_select(list(values), select(*values.values()).select_from(gate))


_INSERT_ORDER = insert(_orders).values(_ORDER_VALUES)
_INSERT_EVENT = insert(_outbox).values(_EVENT_VALUES)
_CLAIM_SQLITE = _claim(sqlite.insert)
# PostgreSQL: one statement of data-modifying CTEs. The key's foreign key to the order is checked at the end
# of the statement, by when the order is in.
_placed = _INSERT_ORDER.returning(_orders.c.id).cte("placed")
_PLACE = _insert_after(_outbox, _EVENT_VALUES, _placed).returning(_outbox.c.id)
_claimed = _claim(postgresql.insert).cte("claimed")
_placed_if_claimed = _insert_after(_orders, _ORDER_VALUES, _claimed).returning(_orders.c.id).cte("placed")
_PLACE_CLAIMING = _insert_after(_outbox, _EVENT_VALUES, _placed_if_claimed).returning(_outbox.c.id)


def _changed(**values: Any) -> Update:
    """An UPDATE of orders that moves ``version`` and ``updated_at`` with the change; returns the order."""
    return (
        update(_orders)
        .values(**values, updated_at=bindparam("now"), version=_orders.c.version + 1)
        .returning(*(_orders.c[name] for name in _ORDER_FIELDS), _orders.c.version)
    )


def _changed_order(row: Row[Any]) -> ChangedOrder:
    return ChangedOrder(msgspec.convert(row, OrderRead, from_attributes=True), row.version)


_ONE_ORDER: ColumnElement[bool] = _orders.c.id == bindparam("order_id")
_SOME_ORDERS: ColumnElement[bool] = _orders.c.id.in_(bindparam("order_ids", expanding=True))
_CHANGE_STATUS = _changed(status=bindparam("status")).where(
    _ONE_ORDER, _orders.c.status.in_(bindparam("sources", expanding=True))
)
_CHANGE_OWN_STATUS = _CHANGE_STATUS.where(_orders.c.user_id == bindparam("owner"))
_STAMP = _changed(processed_at=bindparam("now")).where(_SOME_ORDERS, _orders.c.processed_at.is_(None))
_EXISTING = select(_orders.c.id).where(_SOME_ORDERS)


_TOTAL = select(func.count()).select_from(_orders).where(_orders.c.user_id == bindparam("user_id"))
# The total rides along as an uncorrelated subquery, which the database evaluates once per query; the items
# come as their JSON text, decoded straight into the schema by msgspec.
_PAGE = (
    select(
        *(_orders.c[name] if name != "items" else _orders.c["items"].cast(Text) for name in _ORDER_FIELDS),
        _TOTAL.scalar_subquery(),
    )
    .where(_orders.c.user_id == bindparam("user_id"))
    .order_by(_orders.c.created_at.desc(), _orders.c.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
# asyncpg's SQL ($1: user_id, $2: limit, $3: offset); the dialect's class has no type hints.
_PAGE_POSTGRESQL = str(_PAGE.compile(dialect=asyncpg.dialect()))  # type: ignore[no-untyped-call]
_ITEMS = msgspec.json.Decoder(list[OrderItem])


async def read_page(
    connection: AsyncConnection, user_id: UUID, limit: int, offset: int
) -> tuple[list[OrderRead], int]:
    """One page of the user's orders, newest first, and how many there are in all; on any connection (a
    read needs no session, which would cost more than the query: see ``OrderReader``).

    The hottest query of the API. On PostgreSQL it goes to asyncpg directly: SQLAlchemy's execution and
    result processing, and converting its rows with validation, cost twice the rest of a page of 20
    (bench/RESULTS.md, Hand-written parts). Its errors are then asyncpg's own.
    """
    if connection.dialect.name == "postgresql":
        rows: Sequence[Any] = await _fetch(connection, _PAGE_POSTGRESQL, user_id, limit, offset)
    else:
        rows = (await connection.execute(_PAGE, {"user_id": user_id, "limit": limit, "offset": offset})).all()
    if not rows:  # past the last page, the total has no row to ride on
        return [], await connection.scalar(_TOTAL, {"user_id": user_id}) or 0
    return [_page_row(row) for row in rows], rows[0][-1]


async def _fetch(connection: AsyncConnection, sql: str, *args: Any) -> Sequence[Any]:
    """The rows of asyncpg's ``sql``, run on the connection's driver directly. Its errors are asyncpg's."""
    driver: Any = (await connection.get_raw_connection()).driver_connection
    try:
        return cast("Sequence[Any]", await driver.fetch(sql, *args))
    except Exception as exc:
        if connection_lost(exc):  # as SQLAlchemy does for its own statements: never reuse it
            await connection.invalidate(exc)
        raise


def _page_row(row: Sequence[Any]) -> OrderRead:
    """A row of a page's query as the schema: its values are typed by the driver or SQLAlchemy already."""
    order_id, user_id, items, total_price, status, created_at, updated_at, processed_at, _ = row
    return OrderRead(
        id=order_id,
        user_id=user_id,
        items=_ITEMS.decode(items),
        total_price=total_price,
        status=OrderStatus(status),
        created_at=created_at,
        updated_at=updated_at,
        processed_at=processed_at,
    )


class Page(NamedTuple):
    """A page of orders, how many match in all (None: not counted), and whether more follow it."""

    orders: list[OrderRead]
    total: int | None
    more: bool


@dataclass
class Older(StatementFilter):
    """Keyset paging: the orders after ``position`` newest first, i.e. older in (created_at, id). One
    comparison of the row value, which is one range of an index that starts with (created_at, id) or with
    an equality and them, whatever the depth."""

    position: Position

    def append_to_statement(self, statement: Any, model: type[Any], *args: Any, **kwargs: Any) -> Any:
        created_at, order_id = model.created_at, model.id
        return statement.where(
            tuple_(created_at, order_id)
            < tuple_(
                literal(self.position.created_at, created_at.type), literal(self.position.id, order_id.type)
            )
        )


_NEWEST_FIRST = (OrderBy("created_at", "desc"), OrderBy("id", "desc"))
_COLUMNS = [_orders.c[name] if name != "items" else _orders.c["items"].cast(Text) for name in _ORDER_FIELDS]


async def read_filtered_page(
    connection: AsyncConnection,
    filters: Sequence[StatementFilter],
    limit: int,
    offset: int = 0,
    *,
    count: bool,
) -> Page:
    """A page of the orders that ``filters`` (advanced-alchemy's, and ``Older``) select, newest first; with
    how many they select in all if ``count``. One more row than the page is read, to tell if more follow.

    Every query but the plainest page (``read_page``): the statement varies with the filters given, so it
    goes through SQLAlchemy, whose compiled cache holds one entry per combination of filters.
    """
    selected: Select[Any] = select(*_COLUMNS)
    counted: Select[Any] = select(func.count()).select_from(_orders)
    for condition in filters:
        selected = condition.append_to_statement(selected, Order)
        if count and not isinstance(condition, Older):
            counted = condition.append_to_statement(counted, Order)
    for clause in (*_NEWEST_FIRST, LimitOffset(limit + 1, offset)):
        selected = clause.append_to_statement(selected, Order)
    # The total rides along as in ``_PAGE`` (or a NULL in its place: the rows have one shape).
    selected = selected.add_columns(counted.scalar_subquery() if count else null())
    rows = (await connection.execute(selected)).all()
    total = None
    if count:
        total = rows[0][-1] if rows else await connection.scalar(counted) or 0
    return Page([_page_row(row) for row in rows[:limit]], total, len(rows) > limit)


# A user's page after a cursor, without filters: the plainest page of cursor paging, precompiled like _PAGE.
_PAGE_AFTER = (
    select(*_COLUMNS, null())
    .where(
        _orders.c.user_id == bindparam("user_id"),
        tuple_(_orders.c.created_at, _orders.c.id)
        < tuple_(
            bindparam("created_at", type_=_orders.c.created_at.type), bindparam("id", type_=_orders.c.id.type)
        ),
    )
    .order_by(_orders.c.created_at.desc(), _orders.c.id.desc())
    .limit(bindparam("limit"))
)
_page_after = _PAGE_AFTER.compile(dialect=asyncpg.dialect())  # type: ignore[no-untyped-call]
_PAGE_AFTER_POSTGRESQL, _PAGE_AFTER_PARAMETERS = str(_page_after), tuple(_page_after.positiontup or ())


async def read_page_after(connection: AsyncConnection, user_id: UUID, after: Position, limit: int) -> Page:
    """The page of the user's orders after ``after``, newest first, not counted: ``read_filtered_page``
    with no filter but the user and the cursor, on asyncpg directly as ``read_page`` (S6 in
    bench/RESULTS.md, Hand-written parts)."""
    values = {"user_id": user_id, "created_at": after.created_at, "id": after.id, "limit": limit + 1}
    if connection.dialect.name == "postgresql":
        rows = await _fetch(
            connection, _PAGE_AFTER_POSTGRESQL, *(values[name] for name in _PAGE_AFTER_PARAMETERS)
        )
    else:
        rows = (await connection.execute(_PAGE_AFTER, values)).all()
    return Page([_page_row(row) for row in rows[:limit]], None, len(rows) > limit)
