"""The event pipeline end to end: API → outbox → RabbitMQ → consumer → Celery → worker, as real processes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest
from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.lib.outbox import Outbox
from tests.conftest import forget_redis_keys
from tests.pipeline import BIN, ROOT, Pipeline, process_env
from tests.support import (
    AMQP_URL,
    Account,
    delete_topology,
    eventually,
    order_body,
    place_order,
    same_stores,
    serving,
    settings_for,
    signed_up,
)

UNREACHABLE_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"


@pytest.fixture(scope="module")
def deployment(database_url: str) -> Iterator[Settings]:
    """Settings of a deployment with its own exchange, queues and Redis keys, shared by this module."""
    suffix = uuid4().hex[:8]
    settings = settings_for(
        database_url,
        events_exchange=f"orders-test-{suffix}",
        celery_queue=f"orders-test-{suffix}.process_order",
    )
    yield settings
    forget_redis_keys(settings.redis_key_prefix)
    asyncio.run(delete_topology(settings))


@pytest.fixture(scope="module")
def pipeline(deployment: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    processes = Pipeline(deployment, tmp_path_factory.mktemp("pipeline"))
    processes.start()
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture
async def client(deployment: Settings, pipeline: Pipeline) -> AsyncIterator[AsyncClient]:
    async with serving(deployment) as client:
        yield client


async def processed(client: AsyncClient, account: Account, order_id: str) -> dict[str, Any]:
    """The order once its ``processed_at`` is set, read through the API (and so through the cache)."""
    seen: dict[str, Any] = {}

    async def is_processed() -> bool:
        seen.update((await client.get(f"/orders/{order_id}", headers=account.headers)).json())
        return seen.get("processed_at") is not None

    await eventually(is_processed, f"order {order_id} to be processed")
    return seen


async def fetch(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


EVENTS_OF_ORDER = (
    "SELECT id, sent_at FROM outbox WHERE convert_from(payload, 'UTF8')::jsonb->>'order_id' = $1"
)


async def test_a_new_order_is_processed_within_seconds(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    placed = await client.post("/orders", json=order_body("12.00"), headers=alice.headers)
    order = placed.json()

    done = await processed(client, alice, order["id"])

    assert done["processed_at"] >= order["created_at"]
    assert done["status"] == "PENDING"  # processing leaves the status to payment and shipping
    await eventually(lambda: event_sent(deployment, order["id"]), "the event to be marked sent")
    request_id = placed.headers["x-request-id"]
    assert [line["request_id"] for line in pipeline.consumer.lines(order_id=order["id"])] == [request_id]
    assert [line["request_id"] for line in pipeline.worker.lines(order_id=order["id"])] == [request_id]


async def test_an_order_placed_while_the_broker_is_unreachable_is_processed_when_it_is_back(
    deployment: Settings, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(same_stores(deployment, amqp_url=UNREACHABLE_AMQP_URL)) as cut_off:
        alice = await signed_up(cut_off)
        order = await place_order(cut_off, alice)
        [event] = await fetch(deployment, EVENTS_OF_ORDER, order["id"])
        assert event["sent_at"] is None  # the event waits in the outbox

    monkeypatch.setattr(
        Outbox, "GRACE", timedelta(0)
    )  # relay at once instead of leaving young rows to their request
    async with serving(deployment) as connected:  # another API process, which can reach RabbitMQ
        done = await processed(connected, alice, order["id"])

    assert done["processed_at"] is not None
    await eventually(lambda: event_sent(deployment, order["id"]), "the event to be marked sent")


async def test_the_same_event_delivered_twice_has_one_effect(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    order = await place_order(client, alice)
    first = await processed(client, alice, order["id"])
    [event] = await fetch(
        deployment, "SELECT id, payload FROM outbox WHERE id = $1", await event_id(deployment, order)
    )

    await publish(deployment, event["payload"], message_id=str(event["id"]))
    await eventually(
        lambda: as_awaitable(len(pipeline.worker.lines(order_id=order["id"])) == 2),
        "the worker to handle the duplicate",
    )

    again = (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()
    assert again == first
    [row] = await fetch(deployment, "SELECT version FROM orders WHERE id = $1", UUID(order["id"]))
    assert row["version"] == 2  # created, then processed once
    handled = [line["event"] for line in pipeline.worker.lines(order_id=order["id"])]
    assert handled == ["order processed", "order already processed"]


async def test_a_malformed_message_is_dead_lettered_and_consumption_goes_on(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    message_id = str(uuid4())
    await publish(deployment, b'{"event": "new_order", "order_id": "not a uuid"}', message_id=message_id)

    dead = await dead_letter(deployment, message_id)

    assert dead is not None
    alice = await signed_up(client)
    order = await place_order(client, alice)
    assert (await processed(client, alice, order["id"]))["processed_at"] is not None


async def test_a_dead_lettered_event_replayed_from_the_cli_is_processed_once(
    deployment: Settings, pipeline: Pipeline
) -> None:
    async with serving(same_stores(deployment, amqp_url=UNREACHABLE_AMQP_URL)) as cut_off:
        alice = await signed_up(cut_off)
        order = await place_order(cut_off, alice)
    [event] = await fetch(
        deployment, "SELECT id, payload FROM outbox WHERE id = $1", await event_id(deployment, order)
    )
    # As if it had been published and then dead-lettered: marked sent, and sitting in the dead-letter queue.
    await fetch(deployment, "UPDATE outbox SET sent_at = now() WHERE id = $1", event["id"])
    await publish(
        deployment,
        event["payload"],
        message_id=str(event["id"]),
        exchange=f"{deployment.events_exchange}.dead",
    )
    await dead_letter_arrived(deployment)

    replayed = await asyncio.to_thread(
        subprocess.run,
        [BIN / "litestar", "--app", "app.asgi:app", "events", "replay"],
        cwd=ROOT,
        env=process_env(deployment),
        capture_output=True,
        text=True,
        check=True,
    )

    assert "1 event(s) moved" in replayed.stdout
    async with serving(deployment) as client:
        assert (await processed(client, alice, order["id"]))["processed_at"] is not None
    assert [line["event"] for line in pipeline.worker.lines(order_id=order["id"])] == ["order processed"]


async def test_the_consumer_counts_what_it_did(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    before = await consumer_counts(pipeline)
    message_id = str(uuid4())
    await publish(deployment, b"not even json", message_id=message_id)
    await dead_letter(deployment, message_id)
    alice = await signed_up(client)
    await processed(client, alice, (await place_order(client, alice))["id"])

    after = await consumer_counts(pipeline)

    assert after.get("dispatched", 0) - before.get("dispatched", 0) == 1
    assert after.get("dead_lettered", 0) - before.get("dead_lettered", 0) == 1


async def consumer_counts(pipeline: Pipeline) -> dict[str, float]:
    """The consumer's ``orders_consumer_messages_total`` by outcome, from its metrics endpoint."""
    port = pipeline.consumer.lines(event="serving metrics")[-1]["port"]
    async with AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        exposed = (await http.get("/metrics")).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(exposed)
        for sample in family.samples
        if sample.name == "orders_consumer_messages_total"
    }


async def test_concurrent_retries_rolled_back_leave_exactly_one_event(
    client: AsyncClient, deployment: Settings
) -> None:
    alice = await signed_up(client)
    headers = {**alice.headers, "Idempotency-Key": "pay-now"}
    body = {"items": [{"name": "tea", "quantity": 1, "price": "2.00"}]}

    answers = await asyncio.gather(*(client.post("/orders", json=body, headers=headers) for _ in range(6)))

    [order_id] = {response.json()["id"] for response in answers}
    per_user = "SELECT id FROM outbox WHERE convert_from(payload, 'UTF8')::jsonb->>'user_id' = $1"
    assert len(await fetch(deployment, per_user, alice.id)) == 1
    assert (await processed(client, alice, order_id))["processed_at"] is not None


async def test_orders_placed_while_consumer_and_worker_are_down_are_processed_after_restart(
    client: AsyncClient, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    with pipeline.stopped():
        orders = [await place_order(client, alice) for _ in range(20)]
        await asyncio.sleep(1)
        pending = [(await client.get(f"/orders/{o['id']}", headers=alice.headers)).json() for o in orders]
        assert all(order["processed_at"] is None for order in pending)

    for order in orders:
        await processed(client, alice, order["id"])
    for order in orders:
        assert [line["event"] for line in pipeline.worker.lines(order_id=order["id"])] == ["order processed"]


async def event_sent(settings: Settings, order_id: str) -> bool:
    [event] = await fetch(settings, EVENTS_OF_ORDER, order_id)
    return event["sent_at"] is not None


async def event_id(settings: Settings, order: dict[str, Any]) -> UUID:
    [row] = await fetch(settings, EVENTS_OF_ORDER, order["id"])
    return UUID(str(row["id"]))


async def publish(settings: Settings, body: bytes, message_id: str, exchange: str | None = None) -> None:
    """Put a message on the event exchange (or ``exchange``) as a producer would, bypassing the API."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        target = await channel.get_exchange(exchange or settings.events_exchange)
        message = aio_pika.Message(
            body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await target.publish(message, routing_key="new_order")


async def dead_letter(settings: Settings, message_id: str) -> aio_pika.abc.AbstractIncomingMessage | None:
    """The message with ``message_id`` from the dead-letter queue, once it arrived there."""
    found: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        queue = await channel.get_queue(f"{settings.events_exchange}.new_order.dead")

        async def arrived() -> bool:
            message = await queue.get(fail=False)
            if message is not None:
                await message.ack()
                if message.message_id == message_id:
                    found.append(message)
            return bool(found)

        await eventually(arrived, "the message in the dead-letter queue")
    return found[0]


async def dead_letter_arrived(settings: Settings) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        queue = await channel.get_queue(f"{settings.events_exchange}.new_order.dead")

        async def arrived() -> bool:
            return bool(
                (await channel.declare_queue(queue.name, passive=True)).declaration_result.message_count
            )

        await eventually(arrived, "the message in the dead-letter queue")


async def as_awaitable(value: bool) -> bool:
    return value
