"""The plans PostgreSQL chooses for each kind of page, on a table of 100,000 orders: no page reads the orders
table from end to end, and a page 5,000 orders deep by cursor reads no more rows than the page.

Each page is asked of ``OrderReader`` as the API asks it; the statements it sends (through SQLAlchemy, or
to asyncpg directly for the plainest page) are captured with their parameters and run again under EXPLAIN
ANALYZE.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, NamedTuple, cast
from uuid import UUID

import asyncpg
import pytest
from advanced_alchemy.filters import BeforeAfter, CollectionFilter, StatementFilter
from sqlalchemy import event

from app.orders.schemas import Position
from app.orders.services import OrderReader
from app.storage.db import sqlalchemy_config

USERS, ORDERS, LIMIT, DEPTH = 10, 100_000, 20, 5_000
SEED = f"""
INSERT INTO user_account (id, email, password_hash, role, created_at, updated_at)
SELECT gen_random_uuid(), 'plans-' || n || '@example.com', 'x', 'user', now(), now()
FROM generate_series(1, {USERS}) AS n;
INSERT INTO orders (id, user_id, items, total_price, status, version, created_at, updated_at)
SELECT gen_random_uuid(), users.ids[1 + n % {USERS}], '[{{"name": "x", "quantity": 1, "price": "1.00"}}]',
       1.00, (ARRAY['PENDING', 'PAID', 'SHIPPED', 'CANCELED'])[1 + (n / {USERS}) % 4], 1,
       now() - n * interval '1 second', now() - n * interval '1 second'
FROM generate_series(1, {ORDERS}) AS n, (SELECT array_agg(id) AS ids FROM user_account) AS users;
"""  # noqa: S608 (the numbers above, no input)


class Scan(NamedTuple):
    node: str
    index_name: str | None
    read: int
    """The rows it read: those it passed on, and those its filter dropped."""


class Seeded(NamedTuple):
    reader: OrderReader
    sent: list[tuple[str, tuple[Any, ...]]]
    """The statements sent to the database since the list was last cleared, with their parameters."""
    database: asyncpg.Connection
    user: UUID


@pytest.fixture
async def seeded(own_database: str) -> AsyncIterator[Seeded]:
    database = own_database
    connection = await asyncpg.connect(database.replace("+asyncpg", ""))
    await connection.execute(SEED)
    await connection.execute("VACUUM ANALYZE orders")  # as autovacuum leaves a table: statistics, visibility
    user = await connection.fetchval("SELECT min(user_id::text)::uuid FROM orders")
    db = sqlalchemy_config(database)
    sent: list[tuple[str, tuple[Any, ...]]] = []
    engine = db.get_engine().sync_engine

    @event.listens_for(engine, "before_cursor_execute")
    def through_sqlalchemy(*args: Any) -> None:
        _, _, statement, parameters, _, _ = args
        sent.append((statement, tuple(parameters or ())))

    @event.listens_for(engine, "connect")
    def directly(driver_connection: Any, _: Any) -> None:  # read_page's own fetch
        driver_connection.driver_connection.add_query_logger(
            lambda query: sent.append((query.query, query.args))
        )

    try:
        yield Seeded(OrderReader(cast("Any", None), db), sent, connection, user)  # pages need no cache
    finally:
        await db.get_engine().dispose()
        await connection.close()


async def scans(seeded: Seeded, owner: UUID | None, *filters: StatementFilter, **page: Any) -> list[Scan]:
    """The scans of the orders table in the plans of the statements one page sends, as they ran."""
    seeded.sent.clear()
    await seeded.reader.page(owner, list(filters), LIMIT, **page)
    statements = [(sql, args) for sql, args in seeded.sent if "FROM orders" in sql]
    assert statements, seeded.sent
    found = []
    for sql, args in statements:
        plan = json.loads(await seeded.database.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
        found += [scan for scan in _scans(plan[0]["Plan"])]
    return found


def _scans(node: dict[str, Any]) -> Iterator[Scan]:
    if node.get("Relation Name") == "orders":
        read = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        yield Scan(node["Node Type"], node.get("Index Name"), read)
    for child in node.get("Plans", []):
        yield from _scans(child)


async def position(seeded: Seeded, owner: UUID | None, depth: int) -> Position:
    """The sort key of the order ``depth`` orders down the list (the owner's, or everyone's)."""
    row = await seeded.database.fetchrow(
        "SELECT created_at, id FROM orders WHERE $1::uuid IS NULL OR user_id = $1 "
        "ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
        owner,
        depth - 1,
    )
    assert row is not None
    return Position(row["created_at"], row["id"])


def no_sequential_scan(found: list[Scan]) -> None:
    assert found
    assert not [scan for scan in found if scan.node == "Seq Scan"], found


def paid_or_shipped() -> CollectionFilter[str]:
    return CollectionFilter("status", ["PAID", "SHIPPED"])


async def test_a_users_pages(seeded: Seeded) -> None:
    since = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    recent = BeforeAfter(
        "created_at", None, await seeded.database.fetchval("SELECT now() - interval '1 hour'")
    )

    no_sequential_scan(plain := await scans(seeded, seeded.user))
    no_sequential_scan(await scans(seeded, seeded.user, CollectionFilter("status", ["PAID"])))
    no_sequential_scan(
        await scans(seeded, seeded.user, paid_or_shipped(), BeforeAfter("created_at", None, since))
    )
    no_sequential_scan(await scans(seeded, seeded.user, recent))
    # The plainest page and its count: the user's range of one index, the count without reading a row.
    assert {scan.index_name for scan in plain} == {"ix_orders_user_created"}
    assert "Index Only Scan" in {scan.node for scan in plain}


async def test_every_users_pages(seeded: Seeded) -> None:
    recent = BeforeAfter(
        "created_at", None, await seeded.database.fetchval("SELECT now() - interval '1 hour'")
    )

    no_sequential_scan(await scans(seeded, None, count=False))
    no_sequential_scan(await scans(seeded, None, CollectionFilter("status", ["CANCELED"]), count=False))
    no_sequential_scan(await scans(seeded, None, paid_or_shipped(), count=False))
    no_sequential_scan(await scans(seeded, None, recent, count=False))
    no_sequential_scan(await scans(seeded, seeded.user, CollectionFilter("status", ["PAID"]), count=False))


async def test_a_deep_cursor_page_of_every_order_reads_the_page_alone(seeded: Seeded) -> None:
    after = await position(seeded, None, DEPTH)

    deep = await scans(seeded, None, after=after, count=False)
    deep_offset = await scans(seeded, None, offset=DEPTH, count=False)
    deep_filtered = await scans(seeded, None, paid_or_shipped(), after=after, count=False)

    no_sequential_scan(deep_filtered)
    assert [scan.read for scan in deep] == [LIMIT + 1]  # the page, and one more to tell that more follow
    assert sum(scan.read for scan in deep_offset) > DEPTH  # what the cursor saves: the rows skipped


async def test_a_deep_cursor_page_of_a_user_reads_rows_near_the_page(seeded: Seeded) -> None:
    after = await position(seeded, seeded.user, DEPTH)

    deep = await scans(seeded, seeded.user, after=after, count=False)
    deep_filtered = await scans(seeded, seeded.user, paid_or_shipped(), after=after, count=False)

    # Through the user's range of ix_orders_user_created, or, as PostgreSQL may prefer when one user holds a
    # tenth of the orders (as here), the newest first of every user's with the other users' rows dropped:
    # either way a number of rows that the page's size sets, not its depth.
    for found in (deep, deep_filtered):
        no_sequential_scan(found)
        assert sum(scan.read for scan in found) < DEPTH / 10, found
