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
from operator import itemgetter
from typing import Any, NamedTuple, Protocol, cast
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
    literal_column,
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
# The columns of an order that statements return, by name: OrderRead's fields, in their order.
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
        if self.session.get_bind().dialect.name == "postgresql":
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


class _Row(Protocol):
    """A row of a page's query, its values by column name: asyncpg's ``Record`` or SQLAlchemy's
    ``RowMapping``."""

    def __getitem__(self, name: str, /) -> Any: ...


_Parameter = Callable[[str], ColumnElement[Any]]


def _bind(name: str) -> ColumnElement[Any]:
    """SQLAlchemy's bind parameter ``name``, of the type of the column so named, if any."""
    return bindparam(name, type_=_orders.c[name].type if name in _orders.c else None)


def _numbered(names: tuple[str, ...]) -> _Parameter:
    """asyncpg's placeholders for a statement run with the values of ``names`` in that order: ``$1`` is the
    first. The database infers each one's type from where it stands."""
    return lambda name: literal_column(f"${names.index(name) + 1}")


# A page's SELECTs list _ORDER_FIELDS' columns, and its rows map back to OrderRead by these names (never by
# position). The items come as their JSON text, decoded by msgspec.
_COLUMNS = [_orders.c[name] if name != "items" else _orders.c["items"].cast(Text) for name in _ORDER_FIELDS]
_ITEMS = msgspec.json.Decoder(tuple[OrderItem, ...])
_TOTAL_COLUMN = "total"  # how many orders match in all, beside each row of a page (or a NULL)
_TOTAL = select(func.count()).select_from(_orders).where(_orders.c.user_id == _bind("user_id"))


def _page_row(row: _Row) -> OrderRead:
    """A row of a page's query as the schema, field by column name: its values are typed by the driver or
    SQLAlchemy already, but the items' JSON and (on asyncpg) the status' text."""
    values = list(_ORDER_VALUES_OF(row))
    values[_ITEMS_AT] = _ITEMS.decode(values[_ITEMS_AT])
    values[_STATUS_AT] = OrderStatus(values[_STATUS_AT])
    return OrderRead(*values)


# A row's values picked by column name, in OrderRead's field order (_ORDER_FIELDS is that order), whatever the
# order of the columns: nearly as cheap as unpacking the row, where building a dict of them is not.
_ORDER_VALUES_OF = itemgetter(*_ORDER_FIELDS)
_ITEMS_AT, _STATUS_AT = _ORDER_FIELDS.index("items"), _ORDER_FIELDS.index("status")


def _page(parameter: _Parameter) -> Select[Any]:
    """A page of a user's orders from an offset, counted. The total rides along as an uncorrelated subquery,
    which the database evaluates once per query."""
    owned = _orders.c.user_id == parameter("user_id")
    total = select(func.count()).select_from(_orders).where(owned).scalar_subquery()
    return (
        select(*_COLUMNS, total.label(_TOTAL_COLUMN))
        .where(owned)
        .order_by(_orders.c.created_at.desc(), _orders.c.id.desc())
        .limit(parameter("limit"))
        .offset(parameter("offset"))
    )


def _page_after(parameter: _Parameter) -> Select[Any]:
    """A page of a user's orders past a cursor, not counted: the plainest page of cursor paging."""
    return (
        select(*_COLUMNS, null().label(_TOTAL_COLUMN))
        .where(
            _orders.c.user_id == parameter("user_id"),
            tuple_(_orders.c.created_at, _orders.c.id) < tuple_(parameter("created_at"), parameter("id")),
        )
        .order_by(_orders.c.created_at.desc(), _orders.c.id.desc())
        .limit(parameter("limit"))
    )


def _asyncpg_sql(statement: Select[Any]) -> str:
    return str(statement.compile(dialect=asyncpg.dialect()))  # type: ignore[no-untyped-call]


# The plainest pages, built once: SQLAlchemy's statement (SQLite), and asyncpg's SQL, which takes the values
# of its parameters in the order named beside it.
_PAGE, _PAGE_PARAMETERS = _page(_bind), ("user_id", "limit", "offset")
_PAGE_POSTGRESQL = _asyncpg_sql(_page(_numbered(_PAGE_PARAMETERS)))
_PAGE_AFTER, _PAGE_AFTER_PARAMETERS = _page_after(_bind), ("user_id", "created_at", "id", "limit")
_PAGE_AFTER_POSTGRESQL = _asyncpg_sql(_page_after(_numbered(_PAGE_AFTER_PARAMETERS)))


async def _page_rows(
    connection: AsyncConnection, statement: Select[Any], sql: str, names: tuple[str, ...], **values: Any
) -> Sequence[_Row]:
    """The rows of a precompiled page: on PostgreSQL ``sql`` goes to asyncpg directly (its errors are then
    asyncpg's own), elsewhere ``statement`` through SQLAlchemy."""
    if connection.dialect.name == "postgresql":
        return await _fetch(connection, sql, *(values[name] for name in names))
    return (await connection.execute(statement, values)).mappings().all()


async def _fetch(connection: AsyncConnection, sql: str, *args: Any) -> Sequence[_Row]:
    """The rows of asyncpg's ``sql``, run on the connection's driver directly. Its errors are asyncpg's."""
    driver: Any = (await connection.get_raw_connection()).driver_connection
    try:
        return cast("Sequence[_Row]", await driver.fetch(sql, *args))
    except Exception as exc:
        if connection_lost(exc):  # as SQLAlchemy does for its own statements: never reuse it
            await connection.invalidate(exc)
        raise


async def read_page(
    connection: AsyncConnection, user_id: UUID, limit: int, offset: int
) -> tuple[list[OrderRead], int]:
    """One page of the user's orders, newest first, and how many there are in all; on any connection (a
    read needs no session, which would cost more than the query: see ``OrderReader``).

    The hottest query of the API. On PostgreSQL it goes to asyncpg directly: SQLAlchemy's execution and
    result processing, and converting its rows with validation, cost twice the rest of a page of 20
    (bench/RESULTS.md, Hand-written parts).
    """
    rows = await _page_rows(
        connection, _PAGE, _PAGE_POSTGRESQL, _PAGE_PARAMETERS, user_id=user_id, limit=limit, offset=offset
    )
    if not rows:  # past the last page, the total has no row to ride on
        return [], await connection.scalar(_TOTAL, {"user_id": user_id}) or 0
    return [_page_row(row) for row in rows], rows[0][_TOTAL_COLUMN]


async def read_page_after(connection: AsyncConnection, user_id: UUID, after: Position, limit: int) -> Page:
    """The page of the user's orders after ``after``, newest first, not counted: ``read_filtered_page``
    with no filter but the user and the cursor, on asyncpg directly as ``read_page`` (S6 in
    bench/RESULTS.md, Hand-written parts)."""
    rows = await _page_rows(
        connection,
        _PAGE_AFTER,
        _PAGE_AFTER_POSTGRESQL,
        _PAGE_AFTER_PARAMETERS,
        user_id=user_id,
        created_at=after.created_at,
        id=after.id,
        limit=limit + 1,
    )
    return Page([_page_row(row) for row in rows[:limit]], None, len(rows) > limit)


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

    Every query but the plainest pages (``read_page``, ``read_page_after``): the statement varies with the
    filters given, so it goes through SQLAlchemy, whose compiled cache holds one entry per combination of
    filters.
    """
    selected: Select[Any] = select(*_COLUMNS)
    counted: Select[Any] = select(func.count()).select_from(_orders)
    for condition in filters:
        selected = condition.append_to_statement(selected, Order)
        if count and not isinstance(condition, Older):
            counted = condition.append_to_statement(counted, Order)
    for clause in (*_NEWEST_FIRST, LimitOffset(limit + 1, offset)):
        selected = clause.append_to_statement(selected, Order)
    # The total rides along as in ``_page`` (or a NULL in its place: the rows have one shape).
    selected = selected.add_columns((counted.scalar_subquery() if count else null()).label(_TOTAL_COLUMN))
    rows = (await connection.execute(selected)).mappings().all()
    total = None
    if count:
        total = rows[0][_TOTAL_COLUMN] if rows else await connection.scalar(counted) or 0
    return Page([_page_row(row) for row in rows[:limit]], total, len(rows) > limit)
