"""The reference servers the benchmark compares the API with, served by granian like the API.

``bench.reference:bare`` answers a small msgspec Struct; ``bench.reference:one_redis_get`` does one Redis
GET first. They are the floor: what Litestar on this machine does with no work, and with one round trip.

``bench.reference:irreducible_create`` (R3) and ``bench.reference:irreducible_page`` (R4) are the floor of
S2 and S3: what a create and a page must cost with the same services and none of the API's features (no
authentication, rate limiting, idempotency keys, cache, logging, metrics or ORM). R3 writes the order and
its outbox row in one transaction, then publishes the event with a confirm; R4 is one indexed SELECT. They
read DATABASE_URL, AMQP_URL and EVENTS_EXCHANGE from the environment the benchmark's stack provides.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import msgspec
from aio_pika.abc import AbstractChannel, AbstractConnection
from litestar import Litestar, Request, get, post
from redis.asyncio import Redis
from uuid_utils.compat import uuid7


class Reply(msgspec.Struct):
    id: int
    status: str
    value: str | None = None


@get("/", sync_to_thread=False)
def bare_reply() -> Reply:
    return Reply(id=1, status="ok")


redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@get("/")
async def redis_reply() -> Reply:
    value = await redis.get("bench:reference")
    return Reply(id=1, status="ok", value=value.decode() if isinstance(value, bytes) else value)


bare = Litestar([bare_reply], logging_config=None, openapi_config=None)
one_redis_get = Litestar([redis_reply], logging_config=None, openapi_config=None, on_shutdown=[redis.aclose])


# Shaped like the real orders and outbox tables and their indexes (the user's pages, the unsent events), in
# the bench database. No foreign key to user_account: R3 has no users, so it skips that one index lookup.
TABLES = """
CREATE TABLE IF NOT EXISTS reference_order (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, items jsonb NOT NULL, total_price numeric(16, 2) NOT NULL,
    status varchar(16) NOT NULL, processed_at timestamptz, version integer NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_reference_order_user_created ON reference_order (user_id, created_at, id);
CREATE TABLE IF NOT EXISTS reference_outbox (
    id uuid PRIMARY KEY, topic varchar(64) NOT NULL, payload bytea NOT NULL, request_id varchar(128),
    created_at timestamptz NOT NULL, sent_at timestamptz
);
CREATE INDEX IF NOT EXISTS ix_reference_outbox_unsent ON reference_outbox (created_at) WHERE sent_at IS NULL;
"""
INSERT_ORDER = (
    "INSERT INTO reference_order (id, user_id, items, total_price, status, version, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, 'PENDING', 1, $5, $5)"
)
INSERT_EVENT = (
    "INSERT INTO reference_outbox (id, topic, payload, request_id, created_at) "
    "VALUES ($1, 'new_order', $2, NULL, $3)"
)
PAGE = (
    "SELECT id, user_id, items, total_price, status, created_at, updated_at, processed_at FROM orders "
    "WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 20"
)
POOL_SIZE = 10
"""Connections per worker: more than two cores keep busy (a connection is held for the transaction only, not
the publish), and R3 and R4 with the API's 2 × 20 stay under PostgreSQL's default max_connections of 100."""


class Connections:
    """One granian worker's asyncpg pool, and for R3 its AMQP connection and confirming channel."""

    pool: asyncpg.Pool
    amqp: AbstractConnection
    channel: AbstractChannel
    queue: str


connections = Connections()


def database_url() -> str:
    return os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def open_pool() -> None:
    # Idle connections close after 10 s, so R3's and R4's pools are not both full while the other runs.
    connections.pool = await asyncpg.create_pool(
        database_url(), min_size=1, max_size=POOL_SIZE, max_inactive_connection_lifetime=10
    )


async def close_pool() -> None:
    await connections.pool.close()


async def start_create() -> None:
    """The tables (once: two workers start side by side), the pool, and the quorum queue R3 publishes to."""
    await open_pool()
    async with connections.pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext('reference tables'))")
        await connection.execute(TABLES)
    connections.amqp = await aio_pika.connect(os.environ["AMQP_URL"])
    connections.channel = await connections.amqp.channel(publisher_confirms=True)
    # Named from the stack's exchange, so that Stack.tear_down deletes it; nothing consumes it.
    connections.queue = f"{os.environ['EVENTS_EXCHANGE']}.reference"
    await connections.channel.declare_queue(
        connections.queue, durable=True, arguments={"x-queue-type": "quorum"}
    )


async def stop_create() -> None:
    await connections.amqp.close()
    await close_pool()


class Item(msgspec.Struct):
    name: str
    quantity: int
    price: Decimal


class NewOrder(msgspec.Struct):
    items: list[Item]


class OrderEvent(msgspec.Struct):
    """The API's new_order event body."""

    event: str
    event_id: UUID
    order_id: UUID
    user_id: UUID
    total_price: Decimal
    occurred_at: datetime


class Created(msgspec.Struct):
    id: UUID
    status: str
    total_price: Decimal


new_order = msgspec.json.Decoder(NewOrder)
USER = uuid4()  # R3 has no accounts: every order is this worker's user's


@post("/")
async def create_reply(request: Request[Any, Any, Any]) -> Created:
    """The order row and its event row in one transaction (BEGIN, two INSERTs, COMMIT, as the API), then the
    event published as a persistent message, awaiting RabbitMQ's confirm (the API publishes it after the
    response, in batches; R3 pays for it within the request)."""
    order = new_order.decode(await request.body())
    total = sum((item.price * item.quantity for item in order.items), Decimal("0.00"))
    order_id, now = uuid7(), datetime.now(UTC)
    event_id = uuid7()
    event = msgspec.json.encode(OrderEvent("new_order", event_id, order_id, USER, total, now))
    async with connections.pool.acquire() as connection, connection.transaction():
        items = msgspec.json.encode(order.items).decode()  # asyncpg takes jsonb as text
        await connection.execute(INSERT_ORDER, order_id, USER, items, total, now)
        await connection.execute(INSERT_EVENT, event_id, event, now)
    message = aio_pika.Message(event, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await connections.channel.default_exchange.publish(message, routing_key=connections.queue)
    return Created(id=order_id, status="PENDING", total_price=total)


@get("/", sync_to_thread=False)
def create_ready() -> Reply:
    """Answers once the worker's startup (tables, pool, queue) is done: the benchmark waits for it."""
    return Reply(id=1, status="ok")


class OrderRow(msgspec.Struct):
    id: UUID
    user_id: UUID
    items: msgspec.Raw  # the jsonb's text as PostgreSQL sends it, embedded as is (the API decodes it)
    total_price: Decimal
    status: str
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None


@get("/")
async def page_reply(user_id: UUID) -> list[OrderRow]:
    """The user's 20 newest orders, with the columns the API returns. The API also validates each row into
    its schema and counts the user's orders for a header; the floor does neither."""
    async with connections.pool.acquire() as connection:
        rows = await connection.fetch(PAGE, user_id)
    return [
        OrderRow(order_id, user_id, msgspec.Raw(items), total, status, created_at, updated_at, processed_at)
        for order_id, user_id, items, total, status, created_at, updated_at, processed_at in rows
    ]


irreducible_create = Litestar(
    [create_reply, create_ready],
    logging_config=None,
    openapi_config=None,
    on_startup=[start_create],
    on_shutdown=[stop_create],
)
irreducible_page = Litestar(
    [page_reply], logging_config=None, openapi_config=None, on_startup=[open_pool], on_shutdown=[close_pool]
)
