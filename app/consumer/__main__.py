"""``python -m app.consumer``: consume ``new_order`` events and hand them to the worker in batches.

Each event is validated on arrival: one that is not an event goes to the dead-letter queue at once, alone.
Valid ones gather into a batch, sent as one ``PROCESS_ORDERS`` task (app.orders.processing; the worker runs
it) once it holds ``CONSUMER_BATCH_SIZE`` events or ``CONSUMER_BATCH_WAIT_MS`` after its first arrived,
whichever comes first, through a producer-only Celery app (``celery_app``, app.messaging.task_queue: the
worker's app and tasks are not loaded here). Its events are acknowledged only after the Celery broker
confirmed the task. A task that can't be sent keeps its events in hand and is sent again with backoff until
the Celery broker takes it: the failure is the broker's, not the events', so it must not spend the deliveries
after which the queue dead-letters a message. The task is idempotent, so an event delivered twice (in one
batch or two) has one effect. SIGTERM stops the consumption, sends the batch being filled, lets the batches in
hand finish (a dispatch being retried ends with the attempt under way) and hands every event not dispatched
back to the broker.

Batches are made here rather than by celery-batches, which gathers one-order tasks inside the worker: the
cost was per Celery message (the consumer's send and confirm, RabbitMQ's persistent hop through a quorum
queue, the worker's per-task work; see bench/RESULTS.md), and celery-batches keeps one message per order on
both hops. Its counters are served in Prometheus format on ``CONSUMER_METRICS_PORT``
(``orders_consumer_messages_total{outcome}``, and the depth of the dead-letter queue, whatever put the
messages there), and only its own: not the API's metrics that the modules it imports define.

Traced (app.observability.tracing), each event is received in a span that continues its message's trace, and
its order carries that context to the worker; a batch is dispatched in a span of the first order's trace,
linked to every order's, under which Celery's publish span puts the context in the task's headers.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import signal
from collections import deque
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from celery import Celery
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from uuid_utils.compat import uuid7

from app.config import Settings
from app.messaging.broker import BROKER_ERRORS, REQUEST_ID_HEADER, Topology, close, connect
from app.messaging.task_queue import celery_app
from app.observability.logging import configure_logging
from app.observability.metrics import metric
from app.observability.tracing import continued, current_traceparent, span, start_tracing
from app.orders.events import NEW_ORDER, decode_new_order
from app.orders.processing import PROCESS_ORDERS, OrderToProcess

log = structlog.get_logger("app.consumer")

REGISTRY = CollectorRegistry()
for collector in (ProcessCollector, PlatformCollector, GCCollector):
    collector(registry=REGISTRY)
MESSAGES = Counter(
    metric("consumer_messages_total"),
    "Events handled, by outcome: dispatched, dead_lettered, requeued (at shutdown); "
    "dispatch_failed counts failed dispatch attempts, each retried",
    ["outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    metric("dead_letter_queue_messages"),
    "Events waiting in the dead-letter queue (see `litestar events replay`); more than 0 needs an operator",
    registry=REGISTRY,
)
DEAD_LETTERS_POLL_SECONDS = 5.0
DISPATCH_THREADS = 4
"""Batches dispatched side by side: with CONSUMER_PREFETCH events in hand, a few at most."""
DISPATCH_RETRY_SECONDS = (1.0, 30.0)
"""The first and the longest wait before the dispatch of an event in hand is tried again."""


class Held(NamedTuple):
    """An event in hand: its message (acknowledged once its batch is with the Celery broker) and order."""

    message: AbstractIncomingMessage
    order: OrderToProcess


@dataclass
class Batch:
    """Events sent to the worker in one task."""

    held: list[Held]
    sent: bool = False  # the Celery broker confirmed its task
    settled: bool = False  # sent, or its events handed back to the queue


class Consumer:
    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self.topology = Topology(settings.events_exchange, NEW_ORDER)
        self.batch: list[Held] = []  # the batch being filled
        self.batch_due: asyncio.TimerHandle | None = None  # when it is sent, full or not
        self.dispatched: deque[Batch] = deque()  # in the order of their events' delivery, until acknowledged
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        # Each dispatch holds a thread and a broker connection until RabbitMQ confirms the task.
        self.dispatchers = ThreadPoolExecutor(DISPATCH_THREADS, thread_name_prefix="dispatch")
        celery.conf.broker_pool_limit = DISPATCH_THREADS

    async def run(self, stop: asyncio.Event) -> None:
        self.stopping = stop
        connection = await connect(self.settings.amqp_url, attempt_timeout=5.0)
        channel = await connection.channel()
        try:
            await channel.set_qos(prefetch_count=self.settings.consumer_prefetch)
            _, queue = await self.topology.declare(channel)
            consumer_tag = await queue.consume(self.on_message)
            log.info("consuming", queue=self.topology.queue, prefetch=self.settings.consumer_prefetch)
            watching = asyncio.create_task(self.watch_dead_letters(connection))
            await stop.wait()
            await queue.cancel(consumer_tag)
            self.send_batch()  # now, without waiting for it to fill
            await watching
            if self.in_flight:
                in_hand = sum(len(batch.held) for batch in self.dispatched)
                log.info("finishing messages in hand", count=in_hand)
                await asyncio.wait(self.in_flight)
        finally:
            await close(connection, channel)
            self.dispatchers.shutdown()
        log.info("consumer stopped")

    async def watch_dead_letters(self, connection: AbstractRobustConnection) -> None:
        """Keep ``DEAD_LETTERS`` up to date: RabbitMQ dead-letters past the delivery limit on its own."""
        while not self.stopping.is_set():
            try:
                async with connection.channel() as channel:  # a failed declaration closes its channel
                    queue = await channel.declare_queue(self.topology.dead_letter_queue, passive=True)
                    DEAD_LETTERS.set(queue.declaration_result.message_count or 0)
            except BROKER_ERRORS as exc:
                log.warning("dead-letter queue not measured", error=str(exc))
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), DEAD_LETTERS_POLL_SECONDS)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Validate the event and add it to the batch; a malformed one is dead-lettered alone, at once."""
        request_id = _text(message.headers.get(REQUEST_ID_HEADER))
        try:
            event = decode_new_order(message.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            with structlog.contextvars.bound_contextvars(request_id=request_id, event_id=message.message_id):
                log.error(
                    "malformed event dead-lettered",
                    error=str(exc),
                    body=message.body[:200].decode(errors="replace"),
                )
            if await settle(message.reject(requeue=False)):
                MESSAGES.labels("dead_lettered").inc()
            return
        if self.stopping.is_set():  # delivered while the consumption was being cancelled
            await settle(message.nack(requeue=True))
            MESSAGES.labels("requeued").inc()
            return
        # Captured here, where aio-pika's receive span (continuing the message's trace) is current.
        order = OrderToProcess(event.order_id, request_id, current_traceparent())
        self.batch.append(Held(message, order))
        if len(self.batch) >= self.settings.consumer_batch_size:
            self.send_batch()
        elif self.batch_due is None:
            wait = self.settings.consumer_batch_wait_ms / 1000
            self.batch_due = asyncio.get_running_loop().call_later(wait, self.send_batch)

    def send_batch(self) -> None:
        """Dispatch the batch being filled (in a task of its own), and start a new one."""
        if self.batch_due is not None:
            self.batch_due.cancel()
            self.batch_due = None
        if self.batch:
            batch, self.batch = Batch(self.batch), []
            self.dispatched.append(batch)
            task = asyncio.create_task(self.dispatch(batch))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def dispatch(self, batch: Batch) -> None:
        """Send the batch's task; acknowledge its events once the Celery broker has it, or hand them back if
        the consumer stops before."""
        task_id = str(uuid7())
        traces = [held.order.traceparent for held in batch.held if held.order.traceparent]
        # In the first order's trace (the whole trace of a batch of one), linked to every order's.
        attributes = {"celery.task_id": task_id, "messaging.batch.message_count": len(batch.held)}
        with span("orders dispatch", parent=next(iter(traces), None), links=traces, attributes=attributes):
            batch.sent = await self.send_until_sent(batch.held, task_id)
        if batch.sent:
            for held in batch.held:
                bound = {"request_id": held.order.request_id, "event_id": held.message.message_id}
                # The line carries the order's own trace id (its receipt's), not the batch's.
                with structlog.contextvars.bound_contextvars(**bound), continued(held.order.traceparent):
                    log.info("order dispatched", order_id=str(held.order.order_id), task_id=task_id)
            MESSAGES.labels("dispatched").inc(len(batch.held))
        else:
            log.warning("stopping before the task was dispatched, the events go back to the queue")
            for held in batch.held:
                await settle(held.message.nack(requeue=True))
            MESSAGES.labels("requeued").inc(len(batch.held))
        batch.settled = True
        await self.acknowledge()

    async def acknowledge(self) -> None:
        """Acknowledge the events of the batches sent so far, in one frame.

        A cumulative acknowledgement (``multiple``) settles every earlier delivery of the channel still
        unsettled, so it covers a batch only once every batch delivered before it is settled too: one whose
        task is confirmed first waits for those. One frame per batch rather than per event costs RabbitMQ and
        the consumer a fraction of the CPU (bench/RESULTS.md, Hand-written parts).

        After a lost connection, the batches in hand hold events of the closed channel, then of the one that
        replaced it (a batch being filled, of both): the last event sent, of the newest channel, acknowledges
        those of its own channel; those of the closed one are delivered again (``settle``).
        """
        last: AbstractIncomingMessage | None = None
        while self.dispatched and self.dispatched[0].settled:
            batch = self.dispatched.popleft()
            if batch.sent:
                last = batch.held[-1].message
        if last is not None and not await settle(last.ack(multiple=True)):
            log.warning("events not acknowledged, their channel closed: RabbitMQ delivers them again")

    async def send_until_sent(self, batch: list[Held], task_id: str) -> bool:
        """Send the task, trying again with backoff while it fails; False if the consumer stops first."""
        delay, longest = DISPATCH_RETRY_SECONDS
        orders = msgspec.to_builtins([held.order for held in batch])
        while not self.stopping.is_set():
            try:
                # In a copy of this context: the thread then publishes under the dispatch span, and whatever
                # an attempt leaves attached to its context (a publish that failed) goes with the copy.
                send = functools.partial(contextvars.copy_context().run, self.send, orders, task_id)
                await asyncio.get_running_loop().run_in_executor(self.dispatchers, send)
            except Exception as exc:  # whatever the reason, the events stay in hand
                MESSAGES.labels("dispatch_failed").inc()
                log.error("task not dispatched, retrying", error=str(exc), retry_in=delay, task_id=task_id)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, longest)
            else:
                return True
        return False

    def send(self, orders: list[Any], task_id: str) -> None:
        """Hand the task to the Celery broker; blocks (run it in a thread) until RabbitMQ confirmed it."""
        self.celery.send_task(PROCESS_ORDERS, args=[orders], task_id=task_id)


async def settle(settling: Awaitable[None]) -> bool:
    """Acknowledge, reject or hand back an event; False if its channel closed since its delivery (the
    connection was lost). RabbitMQ then requeued every event left unacknowledged on that channel, and delivers
    them again on the one the robust connection opens in its place: their tasks are sent again, and have one
    effect."""
    try:
        await settling
    except BROKER_ERRORS:
        return False
    return True


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value) if value is not None else None


async def main() -> None:
    settings = Settings.from_env()
    tracing = start_tracing("consumer", instrument_amqp=True)  # before its clients are created
    configure_logging(level=settings.log_level, as_json=settings.log_as_json)
    if not settings.amqp_url:
        raise SystemExit(
            "orders consumer: AMQP_URL is not set (without a broker, events are handled in the API)"
        )
    celery = celery_app(settings)
    if tracing:
        instrument_celery(celery)
    server, _ = start_http_server(settings.consumer_metrics_port, registry=REGISTRY)
    log.info("serving metrics", port=server.server_port, path="/metrics")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Consumer(settings, celery).run(stop)


def instrument_celery(celery: Celery) -> None:
    """Celery's publish span, a child of the dispatch span, puts its context in the task's headers, which the
    worker's task span continues. (aio-pika's receive span continues the trace of each message's
    ``traceparent`` header: ``start_tracing`` instruments aio-pika.)"""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415 - tracing on

    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
    # The instrumentation keeps its publish span open until the broker confirmed the task only if it finds
    # the task by name in the current app (else the span ends at once, measuring nothing), and the dispatch
    # threads have none but the default one: this app, with a task of that name, which the consumer never
    # runs (the worker's is in app.worker.tasks).
    celery.set_default()
    celery.task(name=PROCESS_ORDERS)(_run_by_the_worker)


def _run_by_the_worker(orders: list[Any]) -> None:
    raise NotImplementedError(f"{PROCESS_ORDERS} runs in the worker")


if __name__ == "__main__":
    asyncio.run(main())
