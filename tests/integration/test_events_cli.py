"""``litestar events replay`` against the real RabbitMQ: a replay moves back what the dead-letter queue held
when it started, and no more, even while a consumer dead-letters each replayed message again at once; a
broker error ends it with one line and a non-zero exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from app.messaging.broker import Topology, replay_dead_letters
from app.orders.events import NEW_ORDER
from tests.support import AMQP_URL, ROOT, eventually, ready_in_queue

LITESTAR = Path(sys.executable).parent / "litestar"
UNREACHABLE_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"
DEAD = 5


@pytest.fixture
async def topology() -> AsyncIterator[Topology]:
    """An exchange and queues of the test's own, deleted at the end."""
    topology = Topology(f"orders-test-{uuid4().hex[:8]}", NEW_ORDER)
    yield topology
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        for queue in (topology.queue, topology.dead_letter_queue):
            await channel.queue_delete(queue)
        for exchange in (topology.exchange, topology.dead_letter_exchange):
            await channel.exchange_delete(exchange)


async def dead_lettered(topology: Topology, count: int) -> list[str]:
    """Put ``count`` messages in the dead-letter queue, as RabbitMQ would; their message ids."""
    ids = [str(uuid4()) for _ in range(count)]
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        await topology.declare(channel)
        dead_letters = await channel.get_exchange(topology.dead_letter_exchange)
        for message_id in ids:
            message = aio_pika.Message(
                b'{"event": "new_order", "order_id": "not a uuid"}',
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await dead_letters.publish(message, routing_key=topology.topic)
    await eventually(lambda: has_ready(topology.dead_letter_queue, count), "the dead letters")
    return ids


async def has_ready(queue: str, count: int) -> bool:
    return await ready_in_queue(queue) == count


@asynccontextmanager
async def rejecting_consumer(topology: Topology) -> AsyncIterator[list[str]]:
    """A consumer that dead-letters every message at once, as ours does with a malformed event; the ids of
    the messages it received."""
    received: list[str] = []

    async def reject(message: AbstractIncomingMessage) -> None:
        received.append(str(message.message_id))
        await message.reject(requeue=False)

    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        await channel.set_qos(prefetch_count=16)
        _, queue = await topology.declare(channel)
        tag = await queue.consume(reject)
        try:
            yield received
        finally:
            await queue.cancel(tag)


@pytest.mark.parametrize("limit", [None, DEAD * 10], ids=["no limit", "a limit above the backlog"])
async def test_a_replay_moves_back_only_what_the_dead_letter_queue_held_when_it_started(
    topology: Topology, limit: int | None
) -> None:
    ids = await dead_lettered(topology, DEAD)

    async with rejecting_consumer(topology) as received:
        async with asyncio.timeout(30):  # without a bound the replay takes its own messages round forever
            replayed = await replay_dead_letters(AMQP_URL, topology, limit)
        await eventually(lambda: has_ready(topology.dead_letter_queue, DEAD), "every replayed message back")

    assert replayed == DEAD
    assert sorted(received) == sorted(ids)  # each message went round once


async def test_a_replay_with_a_limit_below_the_backlog_moves_that_many(topology: Topology) -> None:
    await dead_lettered(topology, DEAD)

    async with asyncio.timeout(30):
        replayed = await replay_dead_letters(AMQP_URL, topology, limit=2)

    assert replayed == 2
    assert await ready_in_queue(topology.queue) == 2
    assert await ready_in_queue(topology.dead_letter_queue) == DEAD - 2


def replay_command(topology: Topology, amqp_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "AMQP_URL": amqp_url,
        "EVENTS_EXCHANGE": topology.exchange,
        "LOG_FORMAT": "json",
    }
    return subprocess.run(
        [LITESTAR, "--app", "app.asgi:app", "events", "replay"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], says: str) -> None:
    """Exit status 1 and one line that says what happened (after the log lines of the AMQP client)."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON: logs
    assert line.startswith("Error: RabbitMQ ")
    assert says in line
    assert "0 event(s) moved back" in line


async def test_a_replay_that_cannot_reach_the_broker_says_so_in_one_line(topology: Topology) -> None:
    result = await asyncio.to_thread(replay_command, topology, UNREACHABLE_AMQP_URL)

    assert_one_line_error(result, "RabbitMQ did not answer")


async def test_a_replay_refused_by_the_broker_says_so_in_one_line(topology: Topology) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:  # a classic queue where a quorum one belongs
        await channel.declare_queue(topology.dead_letter_queue, durable=True)

    result = await asyncio.to_thread(replay_command, topology, AMQP_URL)

    assert_one_line_error(result, "RabbitMQ refused: PRECONDITION_FAILED")
