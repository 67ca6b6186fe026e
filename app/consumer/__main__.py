"""``python -m app.consumer``: consume ``new_order`` events and dispatch ``process_order`` for each.

A message is acknowledged only after the Celery broker confirmed the task. One that is not an event goes
to the dead-letter queue at once. One whose task can't be dispatched stays in hand, and the dispatch is
retried with backoff until the Celery broker takes it: the failure is the broker's, not the event's, so it
must not spend the deliveries after which the queue dead-letters a message. The task id is the event id, for
tracing; the task itself is idempotent, so an event delivered twice has one effect. SIGTERM stops the
consumption, lets the messages in hand finish (a dispatch being retried ends with the attempt under way) and
hands every message not dispatched back to the broker. Its counters are served in Prometheus format on
``CONSUMER_METRICS_PORT`` (``orders_consumer_messages_total{outcome}``, and the depth of the dead-letter
queue, whatever put the messages there), and only its own: not the API's metrics that the modules it
imports define.
"""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import msgspec
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from celery import Celery
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from app.config import Settings
from app.lib.broker import BROKER_ERRORS, REQUEST_ID_HEADER, Topology, close, connect
from app.lib.logging import configure_logging
from app.lib.metrics import metric
from app.orders.events import NEW_ORDER, NewOrder, decode_new_order
from app.worker.config import PROCESS_ORDER, create_celery

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
DISPATCH_THREADS = 16
DISPATCH_RETRY_SECONDS = (1.0, 30.0)
"""The first and the longest wait before the dispatch of an event in hand is tried again."""


class Consumer:
    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self.topology = Topology(settings.events_exchange, NEW_ORDER)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        # Each dispatch holds a thread and a broker connection until RabbitMQ confirms the task: enough of
        # both that the confirms are awaited side by side (asyncio's default pool has CPUs + 4 threads).
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
            await watching
            if self.in_flight:
                log.info("finishing messages in hand", count=len(self.in_flight))
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
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            await self.handle(message)
        finally:
            self.in_flight.discard(task)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        request_id = _text(message.headers.get(REQUEST_ID_HEADER))
        with structlog.contextvars.bound_contextvars(request_id=request_id, event_id=message.message_id):
            try:
                event = decode_new_order(message.body)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.error(
                    "malformed event dead-lettered",
                    error=str(exc),
                    body=message.body[:200].decode(errors="replace"),
                )
                await message.reject(requeue=False)
                MESSAGES.labels("dead_lettered").inc()
                return
            if not await self.dispatch_until_sent(event, request_id):
                log.warning("stopping before the task was dispatched, the event goes back to the queue")
                await message.nack(requeue=True)
                MESSAGES.labels("requeued").inc()
                return
            await message.ack()
            MESSAGES.labels("dispatched").inc()
            log.info("order dispatched", order_id=str(event.order_id))

    async def dispatch_until_sent(self, event: NewOrder, request_id: str | None) -> bool:
        """Dispatch the task, trying again with backoff while it fails; False if the consumer stops first."""
        delay, longest = DISPATCH_RETRY_SECONDS
        while not self.stopping.is_set():
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.dispatchers, self.dispatch, event, request_id
                )
            except Exception as exc:  # whatever the reason, the event stays in hand
                MESSAGES.labels("dispatch_failed").inc()
                log.error("task not dispatched, retrying", error=str(exc), retry_in=delay)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, longest)
            else:
                return True
        return False

    def dispatch(self, event: NewOrder, request_id: str | None) -> None:
        """Hand the task to the Celery broker; blocks (run it in a thread) until RabbitMQ confirmed it."""
        self.celery.send_task(
            PROCESS_ORDER,
            args=[str(event.order_id)],
            task_id=str(event.event_id),
            headers={"request_id": request_id},
        )


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value) if value is not None else None


async def main() -> None:
    settings = Settings.from_env()
    configure_logging(level=settings.log_level, as_json=settings.log_as_json)
    if not settings.amqp_url:
        raise SystemExit(
            "orders consumer: AMQP_URL is not set (without a broker, events are handled in the API)"
        )
    server, _ = start_http_server(settings.consumer_metrics_port, registry=REGISTRY)
    log.info("serving metrics", port=server.server_port, path="/metrics")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Consumer(settings, create_celery(settings)).run(stop)


if __name__ == "__main__":
    asyncio.run(main())
