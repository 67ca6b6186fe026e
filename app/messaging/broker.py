"""RabbitMQ: the events' topology that both sides declare, and the API's publisher (aio-pika).

aio-pika's defaults lose messages; here exchanges and queues are durable, messages persistent and
published with confirms and ``mandatory`` routing, queues are quorum queues with a dead-letter exchange
and a delivery limit, so a message that keeps failing ends in ``<queue>.dead`` instead of looping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import aio_pika
import msgspec
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url
from aiormq.exceptions import AMQPError

from app.observability import tracing

log = structlog.get_logger(__name__)

DELIVERY_LIMIT = 20
"""Deliveries of one message before RabbitMQ dead-letters it. Each nack or lost consumer counts, and so does
every hand-back of the messages in hand when a consumer stops: room for many restarts during a backlog,
while a message that crashes its consumer every time still ends in the dead-letter queue."""
REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"
"""W3C trace context, written by the aio-pika instrumentation when tracing is on."""
BROKER_ERRORS = (AMQPError, ConnectionError, OSError, TimeoutError, RuntimeError)
"""What the broker going away raises. aiormq raises a plain ``RuntimeError`` ("<Connection …> closed") for a
channel opened on a connection that is being cut, and ``ChannelInvalidStateError``, a ``RuntimeError`` too,
for a closed channel."""
REPLAY_STEP_TIMEOUT = 10.0
"""Seconds a replay waits for the broker at each step (connection, get, confirmed publication)."""


class Event(msgspec.Struct, frozen=True):
    """An event as the outbox holds it: what is written with the change, and what the publisher sends."""

    id: UUID
    topic: str
    payload: bytes
    request_id: str | None
    created_at: datetime
    trace_context: str | None = None
    """The traceparent of the request that wrote it (None when tracing is off): it is published in it."""


@dataclass(frozen=True)
class Topology:
    """One durable exchange; per topic, a queue bound by the topic and its dead-letter twin."""

    exchange: str
    topic: str

    @property
    def queue(self) -> str:
        return f"{self.exchange}.{self.topic}"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.exchange}.dead"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dead"

    async def declare(self, channel: AbstractChannel) -> tuple[AbstractExchange, AbstractQueue]:
        """Declare everything (idempotent: the same arguments every time, from every process)."""
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        dead_letters = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead_queue = await channel.declare_queue(
            self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead_letters, routing_key=self.topic)
        queue = await channel.declare_queue(
            self.queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": self.topic,
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )
        await queue.bind(exchange, routing_key=self.topic)
        return exchange, queue


def amqp_message(message: Event) -> aio_pika.Message:
    return aio_pika.Message(
        body=message.payload,
        message_id=str(message.id),
        type=message.topic,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=message.created_at,
        headers={REQUEST_ID_HEADER: message.request_id} if message.request_id else {},
    )


class AmqpPublisher:
    """Publishes outbox rows to RabbitMQ over one robust connection owned by the API process.

    ``connect`` runs in the background until the broker answers, so the API starts and serves while
    RabbitMQ is down; later outages are healed by the robust connection. Meanwhile ``publish_many`` answers
    False at once and the rows wait in the outbox for the relay.
    """

    def __init__(self, url: str, topology: Topology, timeout: float = 2.0) -> None:
        self.url = url
        self.topology = topology
        self.timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def ready(self) -> bool:
        connection = self._connection
        return (
            self._exchange is not None
            and connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
        )

    async def connect(self) -> None:
        """Connect and declare the topology, trying again with backoff until both succeed.

        A refused declaration (a queue declared with other arguments, say) is a configuration error that an
        operator can fix while the API runs, and the broker may also go away between the connection and the
        declaration: either way the events wait in the outbox until an attempt succeeds.
        """
        delay = 0.5
        while True:
            self._connection = await connect(self.url, attempt_timeout=self.timeout)
            try:
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange, _ = await self.topology.declare(self._channel)
            except BROKER_ERRORS as exc:
                log.error(
                    "event topology not declared, events wait in the outbox", error=str(exc), retry_in=delay
                )
                await close(self._connection, self._channel)
                self._channel = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            else:
                log.info("publisher connected", exchange=self.topology.exchange)
                return

    async def publish_many(self, messages: Sequence[Event]) -> list[bool]:
        """Publish the messages side by side (the broker confirms them as a stream, not one round trip each),
        within ``timeout`` for the batch as a whole: a deadline per message cost a third of what aio-pika's
        publication itself costs (bench/RESULTS.md, Hand-written parts)."""
        if not messages or not self.ready or self._exchange is None:
            return [False] * len(messages)
        exchange = self._exchange
        publishing = [_publishing(exchange, message) for message in messages]
        try:
            done, _ = await asyncio.wait(publishing, timeout=self.timeout)
        finally:  # those not confirmed in time, or all if cancelled: the outbox keeps their rows
            for task in publishing:
                task.cancel()
        return [
            self._confirmed(message, task, task in done)
            for message, task in zip(messages, publishing, strict=True)
        ]

    def _confirmed(self, message: Event, task: asyncio.Future[Any], in_time: bool) -> bool:
        error = task.exception() if in_time else TimeoutError("not confirmed in time")
        if error is not None:
            log.warning(
                "publish failed, the outbox keeps the event", event_id=str(message.id), error=str(error)
            )
        return error is None

    async def close(self) -> None:
        await close(self._connection, self._channel)
        log.info("publisher closed")


def _publishing(exchange: AbstractExchange, message: Event) -> asyncio.Future[Any]:
    """The message's publication, as a task begun in the trace of the request that wrote the event (a task
    copies the context it was created in): its publish span is a child of the request's."""
    with tracing.continued(message.trace_context):
        return asyncio.ensure_future(
            exchange.publish(amqp_message(message), routing_key=message.topic, mandatory=True)
        )


async def connect(url: str, attempt_timeout: float) -> AbstractRobustConnection:
    """A robust connection to RabbitMQ, retried with backoff until the broker answers.

    The connection is built here rather than by ``connect_robust()`` so that an attempt that fails or is
    cancelled can be closed: an unclosed robust connection goes on reconnecting forever, cancelled or not.
    """
    delay = 0.5
    while True:
        connection = aio_pika.RobustConnection(make_url(url))
        try:
            await connection.connect(timeout=attempt_timeout)
        except BaseException as exc:
            await connection.close()
            if not isinstance(exc, BROKER_ERRORS):
                raise
            log.warning("broker unreachable, retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        else:
            return connection


async def close(connection: AbstractRobustConnection | None, channel: AbstractChannel | None) -> None:
    """Close the channel, then the connection: closing only the connection leaves aio-pika's channel close
    callbacks pending, to be destroyed with the event loop."""
    if channel is not None:
        await channel.close()
    if connection is not None:
        await connection.close()


async def queue_depths(url: str, topology: Topology) -> dict[str, int]:
    """Messages ready in the topology's queue and in its dead-letter queue."""
    connection = await aio_pika.connect(url)
    async with connection, connection.channel() as channel:
        depths = {}
        for name in (topology.queue, topology.dead_letter_queue):
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = queue.declaration_result.message_count or 0
        return depths


class ReplayStopped(Exception):
    """A broker error ended a replay; ``replayed`` messages had been moved back before it."""

    def __init__(self, replayed: int, error: BaseException) -> None:
        super().__init__(str(error) or type(error).__name__)  # a timeout has no message of its own
        self.replayed = replayed


async def replay_dead_letters(url: str, topology: Topology, limit: int | None = None) -> int:
    """Move dead-lettered messages back to the exchange as they were first published; how many moved.

    A replay moves at most the messages the dead-letter queue held when it started (and at most ``limit``):
    one that fails again, a malformed event that the consumer dead-letters at once, returns to the back of
    the queue while the replay runs, and taking it again would go round without end.

    RabbitMQ's own headers (``x-death``, ``x-first-death-*``...) are dropped, so the message starts over
    with a fresh delivery count. Each leaves the dead-letter queue only after its republication is confirmed.
    A broker error (each step waits ``REPLAY_STEP_TIMEOUT`` at most) raises ``ReplayStopped``; the message in
    hand stays in the dead-letter queue (and, if its republication was confirmed, is in the queue too).
    """
    replayed = 0
    try:
        connection = await aio_pika.connect(url, timeout=REPLAY_STEP_TIMEOUT)
        async with connection, connection.channel(publisher_confirms=True, on_return_raises=True) as channel:
            exchange, _ = await topology.declare(channel)
            dead = await channel.declare_queue(topology.dead_letter_queue, passive=True)
            held = dead.declaration_result.message_count or 0
            for _ in range(held if limit is None else min(held, limit)):
                message = await dead.get(fail=False, timeout=REPLAY_STEP_TIMEOUT)
                if message is None:  # taken by someone else meanwhile
                    break
                with tracing.continued(_traceparent(message)):  # the replay joins the event's trace
                    await exchange.publish(
                        _replayed(message),
                        routing_key=topology.topic,
                        mandatory=True,
                        timeout=REPLAY_STEP_TIMEOUT,
                    )
                await message.ack()
                replayed += 1
    except BROKER_ERRORS as exc:
        raise ReplayStopped(replayed, exc) from exc
    return replayed


def _traceparent(message: AbstractIncomingMessage) -> str | None:
    value = message.headers.get(TRACEPARENT_HEADER)
    return value if isinstance(value, str) else None


def _replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message as first published: its own headers kept, RabbitMQ's dropped."""
    headers = {
        key: value
        for key, value in message.headers.items()
        if key == REQUEST_ID_HEADER or not key.startswith("x-")
    }
    return aio_pika.Message(
        body=message.body,
        message_id=message.message_id,
        type=message.type,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=message.timestamp,
        headers=headers,
    )
