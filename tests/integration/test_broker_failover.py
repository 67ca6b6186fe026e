"""The event pipeline while its RabbitMQ connections are cut mid-stream, as HAProxy cuts those of a node that
died (``on-marked-down shutdown-sessions``): every role reconnects at once, as it would to another node.

The API (in this process), the consumer and the worker (real processes) reach RabbitMQ through one proxy,
whose ``cut()`` drops every connection; ``restore()`` right after lets them reconnect.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
import pytest
from httpx import AsyncClient

import app.consumer.__main__ as consumer_main
from app.config import Settings
from app.consumer.__main__ import Consumer
from app.messaging.broker import close, connect
from app.messaging.task_queue import celery_app
from app.orders.events import NEW_ORDER
from tests.pipeline import Pipeline, Role
from tests.proxy import Proxy, proxy_to
from tests.support import (
    AMQP_URL,
    REDIS_URL,
    Account,
    eventually,
    place_order,
    same_stores,
    serving,
    signed_up,
)

ORDERS = 300
STREAMS = 4
"""Clients placing orders side by side, each one after the other: a steady stream."""
PACE = 0.1
"""Seconds each client waits between its orders: the stream lasts ``ORDERS / STREAMS * PACE`` seconds."""
CUTS = 3
UNHANDLED = ("Traceback", "never retrieved", "Exception in callback")
REPORTED = (
    "Cancelling cause reader exited abnormally",  # aiormq's warning that its connection was cut
    "Couldn't ack",  # kombu: a task ended after its connection was cut, and RabbitMQ delivered it again
    "Error cleaning up after event loop",  # Celery: the cut connection, read once more as its loop ends
)
"""Lines with a traceback that report the cut itself, not an error left unhandled."""


@pytest.fixture
def broker() -> Iterator[Proxy]:
    with proxy_to(AMQP_URL) as proxy:
        yield proxy


@pytest.fixture
def through_broker(deployment: Settings, broker: Proxy) -> Settings:
    """The deployment with every role's ``AMQP_URL`` (and so the Celery broker's) through the proxy."""
    return same_stores(deployment, amqp_url=broker.url(AMQP_URL))


@pytest.fixture
def pipeline(through_broker: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    processes = Pipeline(through_broker, tmp_path)
    try:
        processes.start()
        yield processes
    finally:
        processes.stop()


async def test_every_order_is_processed_once_through_cuts_of_every_broker_connection(
    through_broker: Settings, broker: Proxy, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(through_broker) as client:
        alice = await signed_up(client)
        placed: list[str] = []
        placing = asyncio.create_task(place_steadily(client, alice, placed))
        for cut in range(1, CUTS + 1):
            await until_placed(placed, ORDERS * cut // (CUTS + 1))
            # Right as a batch went out: its events not yet acknowledged, its task reaching the worker, more
            # events arriving.
            await next_dispatch(pipeline.consumer)
            broker.cut()
            broker.restore()
        await placing
        await eventually(lambda: none_unprocessed(through_broker, alice), "every order processed", within=60)
        # Both still consume: a new order goes through.
        late = await place_order(client, alice)
        await eventually(lambda: none_unprocessed(through_broker, alice), "the last order processed")
    gc.collect()  # a task whose exception nobody retrieved says so when it is collected

    versions = await versions_of(through_broker, alice)
    assert {str(order_id) for order_id in versions} == {*placed, late["id"]}
    assert len(versions) == ORDERS + 1
    assert set(versions.values()) == {2}  # created, then processed once: what came twice had no effect
    # Each queue consumed by its one consumer, and emptied (of the tasks sent twice too); nothing dead.
    await eventually(lambda: consumed_and_empty(through_broker), "the queues to be empty")
    dead = await ready_and_consumers(f"{through_broker.events_exchange}.new_order.dead")
    assert dead == (0, 0)
    for role in (pipeline.consumer, pipeline.worker):
        assert role.process is not None
        assert role.process.poll() is None, f"the {role.name} died"
        assert unhandled(role) == []
    loop_errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert [record.getMessage() for record in loop_errors] == []
    report(pipeline)


async def test_a_task_running_when_the_worker_s_connection_is_cut_runs_to_its_end(
    through_broker: Settings, broker: Proxy, tmp_path: Path
) -> None:
    """Nothing is cut short: the task commits its UPDATE, then waits for Redis while its connection is cut;
    it still refreshes the cache, which the run of its redelivery (finding the order processed) would not."""
    with proxy_to(REDIS_URL) as redis:
        # The worker's Redis through a proxy, with time to wait for it; the API's straight to Redis.
        worker_side = same_stores(through_broker, redis_url=redis.url(REDIS_URL), redis_timeout_seconds=30.0)
        pipeline = Pipeline(worker_side, tmp_path)
        async with serving(through_broker) as client:
            alice = await signed_up(client)
            order = await place_order(client, alice)
            before = await client.get(f"/orders/{order['id']}", headers=alice.headers)
            assert before.json()["processed_at"] is None  # and so cached, until the worker refreshes it
            redis.hold()
            pipeline.start()
            try:
                await eventually(lambda: processed_in_database(through_broker, order), "the order's UPDATE")
                broker.cut()  # the task waits for Redis: it has its order stamped, not its cache entry
                broker.restore()
                await eventually(lambda: reconnected(pipeline.worker), "the worker to reconnect")
                redis.release()
                await eventually(lambda: read_processed(client, alice, order), "the cache entry refreshed")
                worker = pipeline.worker
                await eventually(lambda: logged(worker, order, "order processed"), "the worker's line")
            finally:
                pipeline.stop()


async def test_the_consumer_s_dead_letter_watch_goes_on_through_cuts_of_its_connection(
    through_broker: Settings, broker: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch opens a channel for each measurement: one opened as the connection is cut must not end it
    (it would stop measuring, and the consumer's stop would fail on it)."""
    monkeypatch.setattr(consumer_main, "DEAD_LETTERS_POLL_SECONDS", 0.001)  # a channel opening all the time
    celery = celery_app(through_broker)
    consumer = Consumer(through_broker, celery)
    connection = await connect(through_broker.amqp_url, attempt_timeout=5)
    channel = await connection.channel()
    try:
        await consumer.topology.declare(channel)
        watching = asyncio.create_task(consumer.watch_dead_letters(connection))
        for _ in range(10):
            await asyncio.sleep(0.1)
            await asyncio.to_thread(broker.cut)  # from another thread, as the watch goes on meanwhile
            await asyncio.to_thread(broker.restore)
        assert not watching.done(), watching.exception()
        await publish_dead_letter(through_broker)
        await eventually(lambda: as_awaitable(dead_letters_counted() == 1), "the dead letter counted")
        consumer.stopping.set()
        await watching
    finally:
        await close(connection, channel)
        consumer.dispatchers.shutdown()
        celery.close()


async def place_steadily(client: AsyncClient, account: Account, placed: list[str]) -> None:
    """``ORDERS`` orders from ``STREAMS`` clients, each placing its share one every ``PACE`` seconds; their
    ids go to ``placed``."""

    async def stream() -> None:
        for _ in range(ORDERS // STREAMS):
            placed.append((await place_order(client, account))["id"])
            await asyncio.sleep(PACE)

    await asyncio.gather(*(stream() for _ in range(STREAMS)))


async def until_placed(placed: list[str], count: int) -> None:
    await eventually(lambda: as_awaitable(len(placed) >= count), f"{count} orders placed")


async def next_dispatch(consumer: Role) -> None:
    """Until the consumer logs that it dispatched another batch (looked for every 10 ms)."""
    before = dispatched(consumer)
    for _ in range(3000):
        if dispatched(consumer) > before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no batch dispatched within 30 s")


def dispatched(consumer: Role) -> int:
    return consumer.log().count('"event":"order dispatched"')


async def reconnected(worker: Role) -> bool:
    return worker.log().count('"event":"Connected to ') >= 2


async def logged(worker: Role, order: dict[str, Any], event: str) -> bool:
    return [line["event"] for line in worker.lines(order_id=order["id"])].count(event) == 1


async def read_processed(client: AsyncClient, account: Account, order: dict[str, Any]) -> bool:
    """Whether the API (which reads the cache first) answers the order processed."""
    answer = await client.get(f"/orders/{order['id']}", headers=account.headers)
    return answer.json()["processed_at"] is not None


def unhandled(role: Role) -> list[str]:
    return [
        line
        for line in role.log().splitlines()
        if any(sign in line for sign in UNHANDLED) and not any(known in line for known in REPORTED)
    ]


async def fetch(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def versions_of(settings: Settings, account: Account) -> dict[UUID, int]:
    rows = await fetch(settings, "SELECT id, version FROM orders WHERE user_id = $1", UUID(account.id))
    return {row["id"]: row["version"] for row in rows}


async def none_unprocessed(settings: Settings, account: Account) -> bool:
    query = "SELECT id FROM orders WHERE user_id = $1 AND processed_at IS NULL"
    return not await fetch(settings, query, UUID(account.id))


async def processed_in_database(settings: Settings, order: dict[str, Any]) -> bool:
    query = "SELECT id FROM orders WHERE id = $1 AND processed_at IS NOT NULL"
    return bool(await fetch(settings, query, UUID(order["id"])))


async def consumed_and_empty(settings: Settings) -> bool:
    queues = (f"{settings.events_exchange}.new_order", settings.celery_queue)
    return [await ready_and_consumers(queue) for queue in queues] == [(0, 1), (0, 1)]


async def ready_and_consumers(queue: str) -> tuple[int, int]:
    """Messages ready in ``queue``, and its consumers (asked of RabbitMQ directly, not through the proxy)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        declared = (await channel.declare_queue(queue, passive=True)).declaration_result
        return declared.message_count or 0, declared.consumer_count or 0


async def publish_dead_letter(settings: Settings) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        exchange = await channel.get_exchange(f"{settings.events_exchange}.dead")
        await exchange.publish(aio_pika.Message(b"{}"), routing_key=NEW_ORDER)


def dead_letters_counted() -> float | None:
    return consumer_main.REGISTRY.get_sample_value("orders_dead_letter_queue_messages")


async def as_awaitable(value: bool) -> bool:
    return value


def report(pipeline: Pipeline) -> None:
    again = len(pipeline.worker.lines(event="order already processed"))
    sent = dispatched(pipeline.consumer)
    print(f"\n{ORDERS + 1} orders, {CUTS} cuts: {sent} dispatched, {again} found already processed")
