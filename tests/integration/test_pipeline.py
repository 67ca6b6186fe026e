"""The event pipeline end to end: API → outbox → RabbitMQ → consumer → Celery → worker, as real processes."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import msgspec
import pytest
from httpx import AsyncClient
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.messaging.broker import DELIVERY_LIMIT, AmqpPublisher, Topology
from app.messaging.outbox import Outbox
from app.messaging.task_queue import celery_app
from app.orders.events import NEW_ORDER
from app.orders.processing import PROCESS_ORDERS
from app.orders.schemas import OrderCreate
from app.storage.db import sqlalchemy_config
from tests.conftest import deployed, forget_redis_keys
from tests.pipeline import BIN, ROOT, WORKER_PROCESSES, Pipeline, Role, process_env
from tests.proxy import proxy_to
from tests.support import (
    AMQP_URL,
    Account,
    delete_topology,
    eventually,
    order_body,
    own_topology,
    place_order,
    ready_in_queue,
    same_stores,
    serving,
    signed_up,
)

UNREACHABLE_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"


@pytest.fixture(scope="module")
def deployment(database_url: str) -> Iterator[Settings]:
    """Settings of a deployment with its own exchange, queues and Redis keys, shared by this module."""
    with deployed(database_url) as settings:
        yield settings


@pytest.fixture(scope="module")
def pipeline(deployment: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    processes = Pipeline(deployment, tmp_path_factory.mktemp("pipeline"))
    try:
        processes.start()  # inside: a role that did start is stopped even if another one did not
        yield processes
    finally:
        processes.stop()


@pytest.fixture
async def client(deployment: Settings, pipeline: Pipeline) -> AsyncIterator[AsyncClient]:
    async with serving(deployment) as client:
        yield client


async def processed(
    client: AsyncClient, account: Account, order_id: str, within: float = 15.0
) -> dict[str, Any]:
    """The order once its ``processed_at`` is set, read through the API (and so through the cache)."""
    seen: dict[str, Any] = {}

    async def is_processed() -> bool:
        seen.update((await client.get(f"/orders/{order_id}", headers=account.headers)).json())
        return seen.get("processed_at") is not None

    await eventually(is_processed, f"order {order_id} to be processed", within=within)
    return seen


async def fetch(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    return await fetch_from(settings.database_url, query, *args)


async def fetch_from(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await connect(database_url)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def connect(database_url: str) -> asyncpg.Connection:
    """A connection of our own, as the ``postgres`` superuser unless the URL names another role."""
    return await asyncpg.connect(database_url.replace("+asyncpg", ""))


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


async def test_each_order_s_request_id_reaches_the_consumer_and_worker_log_lines(
    client: AsyncClient, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    # More orders than the worker has processes, so that one process handles several of them.
    placed = [
        await client.post("/orders", json=order_body("12.00"), headers=alice.headers)
        for _ in range(WORKER_PROCESSES + 1)
    ]
    for response in placed:
        order_id, request_id = response.json()["id"], response.headers["x-request-id"]
        await processed(client, alice, order_id)
        assert [line["request_id"] for line in pipeline.consumer.lines(order_id=order_id)] == [request_id]
        assert [line["request_id"] for line in await logged_by(pipeline.worker, order_id)] == [request_id]
        assert f'"request_id":"{request_id}"' in pipeline.worker.log()  # what the README tells to grep for


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


async def test_the_publisher_reaches_a_broker_down_at_its_start_or_lost_later_and_sends_what_waited(
    deployment: Settings, pipeline: Pipeline
) -> None:
    with proxy_to(AMQP_URL) as broker:
        broker.cut()  # RabbitMQ unreachable while the API starts
        async with serving(same_stores(deployment, amqp_url=broker.url(AMQP_URL))) as client:
            alice = await signed_up(client)
            before = await place_order(client, alice)
            broker.restore()
            await processed(client, alice, before["id"], within=30)

            broker.cut()  # the connection drops
            during = await place_order(client, alice)
            await asyncio.sleep(1)
            [event] = await fetch(deployment, EVENTS_OF_ORDER, during["id"])
            assert event["sent_at"] is None  # the event waits in the outbox
            broker.restore()
            await processed(client, alice, during["id"], within=30)

    for order in (before, during):
        await eventually(partial(event_sent, deployment, order["id"]), "the event to be marked sent")


async def test_a_refused_topology_is_declared_once_the_operator_fixed_it_and_events_go_out(
    database_url: str,
) -> None:
    settings = own_topology(database_url)
    queue = f"{settings.events_exchange}.new_order"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        await channel.declare_queue(queue, durable=True)  # a mistake: a classic queue, without dead letters
        try:
            async with serving(settings) as client:
                alice = await signed_up(client)
                order = await place_order(client, alice)
                await asyncio.sleep(1)
                assert not await event_sent(settings, order["id"])  # the declaration was refused

                await channel.queue_delete(queue)  # the fix: the publisher declares it as it should be

                await eventually(lambda: event_sent(settings, order["id"]), "the event to be sent", within=30)
            # Declared as the topology says (declaring it again with those arguments succeeds), and the
            # event is in it.
            _, declared = await Topology(settings.events_exchange, NEW_ORDER).declare(channel)
            assert declared.declaration_result.message_count == 1
        finally:
            forget_redis_keys(settings.redis_key_prefix)
            await delete_topology(settings)


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
    status = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "litestar"), "--app", "app.asgi:app", "events", "status"],
        cwd=ROOT,
        env=process_env(deployment),
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{deployment.events_exchange}.new_order.dead: 1 message(s) ready" in status.stdout
    unreachable = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "litestar"), "--app", "app.asgi:app", "events", "status"],
        cwd=ROOT,
        env={**process_env(deployment), "AMQP_URL": UNREACHABLE_AMQP_URL},
        capture_output=True,
        text=True,
        check=False,
    )
    assert unreachable.returncode == 1
    assert "outbox: " in unreachable.stdout  # what PostgreSQL knows is still shown
    assert "RabbitMQ did not answer" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    replayed = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "litestar"), "--app", "app.asgi:app", "events", "replay"],
        cwd=ROOT,
        env=process_env(deployment),
        capture_output=True,
        text=True,
        check=True,
    )

    assert "1 event(s) moved" in replayed.stdout
    async with serving(deployment) as client:
        assert (await processed(client, alice, order["id"]))["processed_at"] is not None
    assert [line["event"] for line in await logged_by(pipeline.worker, order["id"])] == ["order processed"]


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


async def test_the_consumer_reports_how_many_events_wait_in_the_dead_letter_queue(
    deployment: Settings, pipeline: Pipeline
) -> None:
    async def waiting() -> float:
        families = text_string_to_metric_families(await consumer_metrics(pipeline))
        return next(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "orders_dead_letter_queue_messages"
        )

    async def some() -> bool:
        return await waiting() >= 1

    async def none() -> bool:
        return await waiting() == 0

    message_id = str(uuid4())
    await publish(deployment, b"not even json", message_id=message_id)
    await eventually(some, "the dead letter to be counted")

    await dead_letter(deployment, message_id)  # taken out, as a replay does

    await eventually(none, "the dead-letter queue to be counted empty")


async def test_the_consumer_exposes_only_its_own_metrics(pipeline: Pipeline) -> None:
    names = {family.name for family in text_string_to_metric_families(await consumer_metrics(pipeline))}

    assert "orders_consumer_messages" in names
    assert "process_cpu_seconds" in names
    api_only = {
        "orders_outbox_pending",
        "orders_outbox_oldest_pending_age_seconds",
        "orders_events_published",
    }
    assert not api_only & names


async def consumer_counts(pipeline: Pipeline) -> dict[str, float]:
    """The consumer's ``orders_consumer_messages_total`` by outcome, from its metrics endpoint."""
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(await consumer_metrics(pipeline))
        for sample in family.samples
        if sample.name == "orders_consumer_messages_total"
    }


async def consumer_metrics(pipeline: Pipeline) -> str:
    port = pipeline.consumer.lines(event="serving metrics")[-1]["port"]
    async with AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        return (await http.get("/metrics")).text


PER_USER_EVENTS = "SELECT id FROM outbox WHERE convert_from(payload, 'UTF8')::jsonb->>'user_id' = $1"


async def test_concurrent_retries_with_one_idempotency_key_make_one_order_with_one_event(
    client: AsyncClient, deployment: Settings
) -> None:
    alice = await signed_up(client)
    headers = {**alice.headers, "Idempotency-Key": "pay-now"}
    body = {"items": [{"name": "tea", "quantity": 1, "price": "2.00"}]}

    answers = await asyncio.gather(*(client.post("/orders", json=body, headers=headers) for _ in range(6)))

    [order_id] = {response.json()["id"] for response in answers}
    assert len(await fetch(deployment, PER_USER_EVENTS, alice.id)) == 1
    assert (await processed(client, alice, order_id))["processed_at"] is not None


async def test_an_order_that_loses_the_race_for_its_idempotency_key_leaves_no_event(
    deployment: Settings,
) -> None:
    """The race forced: the request's claim of its Idempotency-Key waits for ours, which commits first.

    (Concurrent requests alone may all find the key committed and replay it without ever waiting.)
    """
    async with serving(deployment) as client:
        alice = await signed_up(client)
        body = order_body("2.00")
        first = msgspec.json.decode(msgspec.json.encode(body), type=OrderCreate)
        first_id, now = uuid4(), datetime.now(UTC)
        competitor = await connect(deployment.database_url)
        try:
            # Another request with the same key, in the middle of its transaction: its order and key are in.
            transaction = competitor.transaction()
            await transaction.start()
            await competitor.execute(
                "INSERT INTO orders"
                " (id, user_id, items, total_price, status, version, created_at, updated_at)"
                " VALUES ($1, $2, $3::jsonb, $4, 'PENDING', 1, $5, $5)",
                first_id,
                UUID(alice.id),
                msgspec.json.encode(first.items).decode(),
                first.total,
                now,
            )
            await competitor.execute(
                "INSERT INTO order_idempotency_key (user_id, key, fingerprint, order_id, created_at)"
                " VALUES ($1, 'pay-now', $2, $3, $4)",
                UUID(alice.id),
                first.fingerprint(),
                first_id,
                now,
            )
            headers = {**alice.headers, "Idempotency-Key": "pay-now"}
            posting = asyncio.create_task(client.post("/orders", json=body, headers=headers))

            async def waits_for_the_competitor() -> bool:
                blocked = "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
                return bool(await fetch(deployment, blocked, competitor.get_server_pid()))

            await eventually(
                waits_for_the_competitor, "the request to insert its key (its order and event in)"
            )
            await transaction.commit()  # the request's claim finds the key taken: it writes nothing, replays
            answer = await posting
        finally:
            await competitor.close()

    assert answer.status_code == 201, answer.text
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert answer.json()["id"] == str(first_id)
    # The request's own order and its event were not written: only the competitor's order is there (which
    # came without an event), and no event at all.
    orders = await fetch(deployment, "SELECT id FROM orders WHERE user_id = $1", UUID(alice.id))
    assert [row["id"] for row in orders] == [first_id]
    assert await fetch(deployment, PER_USER_EVENTS, alice.id) == []


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
        handled = [line["event"] for line in await logged_by(pipeline.worker, order["id"])]
        assert handled == ["order processed"]
    tasks = {await task_of(pipeline, order) for order in orders}
    assert len(tasks) < len(orders)  # the backlog went to the worker in batches


async def test_a_batch_is_sent_once_full_or_once_its_first_event_waited_long_enough(
    client: AsyncClient, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    batching = {"CONSUMER_BATCH_SIZE": "3", "CONSUMER_BATCH_WAIT_MS": "3000"}
    with pipeline.instead("consumer", **batching) as consumer:
        full = [await place_order(client, alice) for _ in range(6)]
        await eventually(
            lambda: as_awaitable(len(consumer.lines(event="order dispatched")) == 6), "two full batches"
        )
        last = await place_order(client, alice)
        await asyncio.sleep(1)
        assert not consumer.lines(event="order dispatched", order_id=last["id"])  # its batch is not full
        await eventually(
            lambda: as_awaitable(bool(consumer.lines(event="order dispatched", order_id=last["id"]))),
            "the last batch to be sent when its time is up",
        )
        tasks = [line["task_id"] for line in consumer.lines(event="order dispatched")]

    assert [tasks.count(task) for task in dict.fromkeys(tasks)] == [3, 3, 1]
    for order in [*full, last]:
        await processed(client, alice, order["id"])


async def test_a_malformed_message_is_dead_lettered_alone_and_its_neighbours_are_processed(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    message_id = str(uuid4())
    with pipeline.stopped():  # the three wait in the queue, one after the other, to come in one batch
        before = await place_order(client, alice)
        await eventually(lambda: event_sent(deployment, before["id"]), "the first event to be queued")
        await publish(deployment, b'{"event": "new_order"}', message_id=message_id)
        after = await place_order(client, alice)
        await eventually(lambda: event_sent(deployment, after["id"]), "the last event to be queued")

    assert (await dead_letter(deployment, message_id)) is not None
    for order in (before, after):
        assert (await processed(client, alice, order["id"]))["processed_at"] is not None
    assert await task_of(pipeline, before) == await task_of(pipeline, after)


async def test_a_batch_processes_each_order_once_whatever_it_holds(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    old = await place_order(client, alice)
    await processed(client, alice, old["id"])
    with pipeline.stopped():
        new = await place_order(client, alice)
        await eventually(lambda: event_sent(deployment, new["id"]), "the event to be queued")
        await purge(f"{deployment.events_exchange}.new_order")  # left to the batch below
    unknown = str(uuid4())
    batch = [[new["id"], "first"], [new["id"], "again"], [old["id"], "old"], [unknown, None]]

    await asyncio.to_thread(send_task, deployment, PROCESS_ORDERS, [batch])

    await eventually(
        lambda: as_awaitable(bool(pipeline.worker.lines(order_id=unknown))), "the batch to be processed"
    )
    assert (await processed(client, alice, new["id"]))["processed_at"] is not None
    said = {
        (line["order_id"], line["request_id"]): line["event"]
        for line in pipeline.worker.lines()
        if line.get("request_id") in {"first", "again", "old"} or line.get("order_id") == unknown
    }
    assert said == {
        (new["id"], "first"): "order processed",
        (new["id"], "again"): "order already processed",
        (old["id"], "old"): "order already processed",
        (unknown, None): "order to process not found",
    }
    rows = await fetch(deployment, "SELECT version FROM orders WHERE id = $1", UUID(new["id"]))
    assert [row["version"] for row in rows] == [2]  # created, then processed once


async def purge(queue_name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        await (await channel.get_queue(queue_name)).purge()


async def test_sigterm_lets_the_consumer_finish_the_dispatch_in_hand(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    with proxy_to(AMQP_URL) as celery_broker:
        celery_broker.hold()  # the consumer's connection to the Celery broker waits
        with pipeline.instead("consumer", CELERY_BROKER_URL=celery_broker.url(AMQP_URL)) as consumer:
            order = await place_order(client, alice)
            await eventually(
                lambda: as_awaitable(celery_broker.accepted > 0), "the consumer to start dispatching"
            )
            assert consumer.process is not None
            consumer.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(1)
            assert consumer.process.poll() is None  # still finishing the dispatch in hand
            celery_broker.release()
            assert await asyncio.to_thread(consumer.process.wait, 30) == 0
            said = [line["event"] for line in consumer.lines() if line["event"] != "serving metrics"]
            assert said[-3:] == ["finishing messages in hand", "order dispatched", "consumer stopped"]

    await processed(client, alice, order["id"])
    assert await ready_in_queue(f"{deployment.events_exchange}.new_order") == 0


async def test_a_consumer_killed_mid_batch_leaves_its_events_to_the_next_one(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    with proxy_to(AMQP_URL) as celery_broker:
        celery_broker.hold()  # the batch's task can't reach the Celery broker
        with pipeline.instead("consumer", CELERY_BROKER_URL=celery_broker.url(AMQP_URL)) as consumer:
            orders = [await place_order(client, alice) for _ in range(3)]
            await eventually(
                lambda: as_awaitable(celery_broker.accepted > 0), "the consumer to start dispatching"
            )
            consumer.stop(signal.SIGKILL)
        # The pipeline's own consumer is back, and takes the events over.

    for order in orders:
        assert (await processed(client, alice, order["id"]))["processed_at"] is not None
    ids = [UUID(order["id"]) for order in orders]
    rows = await fetch(deployment, "SELECT version FROM orders WHERE id = ANY($1)", ids)
    assert [row["version"] for row in rows] == [2, 2, 2]  # created, then processed once


async def test_an_event_whose_task_cannot_be_dispatched_stays_in_hand_until_the_consumer_stops(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    with pipeline.instead("consumer", CELERY_BROKER_URL=UNREACHABLE_AMQP_URL) as consumer:
        order = await place_order(client, alice)
        await eventually(
            lambda: as_awaitable(bool(consumer.lines(event="task not dispatched, retrying"))),
            "a dispatch to fail",
            within=30,
        )
        consumer.stop()
        # Handed back once, at shutdown: the failures did not spend the deliveries after which
        # RabbitMQ would dead-letter the event.
        connection = await aio_pika.connect(AMQP_URL)
        async with connection, connection.channel() as channel:
            queue = await channel.get_queue(f"{deployment.events_exchange}.new_order")
            message = await queue.get(timeout=5)
            assert message.headers.get("x-delivery-count") == 1
            await message.nack(requeue=True)

    assert (await processed(client, alice, order["id"]))["processed_at"] is not None


async def task_of(pipeline: Pipeline, order: dict[str, Any]) -> str:
    """The id of the task that carries the order, as the consumer logged it when the broker took the task."""

    def dispatched() -> list[dict[str, Any]]:
        return pipeline.consumer.lines(event="order dispatched", order_id=order["id"])

    await eventually(lambda: as_awaitable(bool(dispatched())), "the order to be dispatched")
    [line] = dispatched()
    return str(line["task_id"])


def outcomes(worker: Role, task_id: str) -> list[str]:
    """What Celery logged of the task's runs that did not succeed: retries and failures."""
    return [
        line["event"]
        for line in worker.lines()
        if task_id in line["event"] and (" retry: " in line["event"] or " raised " in line["event"])
    ]


async def test_the_worker_retries_an_order_until_its_database_is_back(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    with (
        proxy_to(deployment.database_url) as database,
        pipeline.instead("worker", DATABASE_URL=database.url(deployment.database_url)) as worker,
    ):
        database.cut()
        order = await place_order(client, alice)
        task_id = await task_of(pipeline, order)

        await eventually(
            lambda: as_awaitable(len(outcomes(worker, task_id)) >= 2), "the task to be retried", within=30
        )
        assert all(" retry: " in outcome for outcome in outcomes(worker, task_id))
        # Each retry waits out its backoff in RabbitMQ (native delayed delivery of the quorum queue), not
        # unacknowledged in the worker, which holds no task for later.
        await eventually(
            lambda: waits_in_rabbitmq(deployment), "the retried task to wait in RabbitMQ", within=30
        )
        database.restore()
        done = await processed(client, alice, order["id"], within=30)

    assert done["processed_at"] is not None
    assert [line["event"] for line in await logged_by(worker, order["id"])] == ["order processed"]


async def waits_in_rabbitmq(settings: Settings) -> bool:
    """Whether a task waits in one of Celery's delayed-delivery queues (shared by the vhost's workers) while
    the deployment's worker holds none scheduled for later."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        delayed = [
            await channel.declare_queue(level_name(level), passive=True) for level in range(MAX_LEVEL + 1)
        ]
    if not any(queue.declaration_result.message_count for queue in delayed):
        return False
    return not await asyncio.to_thread(scheduled_in_worker, settings)


def scheduled_in_worker(settings: Settings) -> list[Any]:
    """The tasks that the deployment's worker (its node named as tests.pipeline names it) holds for later."""
    node = f"{settings.celery_queue}@{socket.gethostname()}"
    celery = celery_app(settings)
    try:
        replies = celery.control.inspect(destination=[node], timeout=1).scheduled()
    finally:
        celery.close()
    assert replies is not None, f"{node} did not answer"
    return list(replies[node])


@asynccontextmanager
async def role_without_connections(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """A role (its name, and the database URL to log in with it) that may process orders, as the worker does,
    but may not connect (CONNECTION LIMIT 0): PostgreSQL refuses it "too many connections" (53300), while
    connecting, until ``ALTER ROLE … CONNECTION LIMIT -1``. A role of its own: superusers ignore limits."""
    role = f"orders_worker_{uuid4().hex[:8]}"
    parts = urlsplit(database_url)
    database = parts.path.lstrip("/")
    admin = await connect(database_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
        await admin.execute(
            f'GRANT CONNECT ON DATABASE "{database}" TO "{role}";'
            f'GRANT USAGE ON SCHEMA public TO "{role}";'
            f'GRANT SELECT, UPDATE ON orders TO "{role}"'
        )
        yield role, urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')  # its grants, then the role
        await admin.close()


async def test_the_worker_retries_an_order_while_postgresql_refuses_its_connections(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    async with role_without_connections(deployment.database_url) as (role, as_role):
        with pipeline.instead("worker", DATABASE_URL=as_role) as worker:
            order = await place_order(client, alice)
            task_id = await task_of(pipeline, order)

            await eventually(
                lambda: as_awaitable(bool(outcomes(worker, task_id))), "the task to run", within=30
            )
            refused = outcomes(worker, task_id)[0]
            assert " retry: " in refused, refused  # not failed: a failed task is acknowledged, its order lost
            assert "too many connections" in refused, refused
            await fetch(deployment, f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
            done = await processed(client, alice, order["id"], within=30)

    assert done["processed_at"] is not None
    assert [line["event"] for line in await logged_by(worker, order["id"])] == ["order processed"]
    [row] = await fetch(deployment, "SELECT version FROM orders WHERE id = $1", UUID(order["id"]))
    assert row["version"] == 2  # created, then processed once


async def test_the_worker_retries_an_order_whose_connection_was_terminated_mid_statement(
    client: AsyncClient, deployment: Settings, pipeline: Pipeline
) -> None:
    alice = await signed_up(client)
    with pipeline.stopped():
        order = await place_order(client, alice)
        # Published before the restart, which blocks this event loop: an event the outbox's dispatcher could
        # not publish meanwhile would go out twice, from the dispatcher and the relay, in one batch.
        await eventually(lambda: event_sent(deployment, order["id"]), "the event to be queued")
        locker = await connect(deployment.database_url)
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", UUID(order["id"]))
    try:  # the pipeline is back: the worker's UPDATE of the order waits for our lock
        blocked = "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"

        async def worker_waits() -> bool:
            return bool(await fetch(deployment, blocked, locker.get_server_pid()))

        await eventually(worker_waits, "the worker to update the order", within=30)
        task_id = await task_of(pipeline, order)
        [worker_backend] = await fetch(deployment, blocked, locker.get_server_pid())
        await fetch(deployment, "SELECT pg_terminate_backend($1)", worker_backend["pid"])  # as an admin may

        await eventually(lambda: as_awaitable(bool(outcomes(pipeline.worker, task_id))), "the task to end")
        [terminated] = outcomes(pipeline.worker, task_id)
        assert " retry: " in terminated, terminated
        assert "ConnectionLost" in terminated, terminated
    finally:
        await transaction.rollback()
        await locker.close()

    assert (await processed(client, alice, order["id"], within=30))["processed_at"] is not None
    assert [line["event"] for line in await logged_by(pipeline.worker, order["id"])] == ["order processed"]


async def test_a_message_returned_past_the_delivery_limit_is_dead_lettered() -> None:
    topology = Topology(f"orders-test-{uuid4().hex[:8]}", NEW_ORDER)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        exchange, queue = await topology.declare(channel)
        try:
            await exchange.publish(aio_pika.Message(b"{}", message_id="poison"), routing_key=NEW_ORDER)
            deliveries = 0
            while (message := await next_message(queue)) is not None:
                deliveries += 1
                await message.nack(requeue=True)  # as a consumer that fails on it again and again would
            dead = await next_message(await channel.get_queue(topology.dead_letter_queue))
        finally:
            await delete_queues_and_exchanges(channel, topology)
    assert deliveries == DELIVERY_LIMIT + 1
    assert dead is not None
    assert dead.message_id == "poison"


async def test_the_relays_of_several_processes_share_a_backlog_and_publish_each_event_once(
    own_database: str,
) -> None:
    topology = Topology(f"orders-test-{uuid4().hex[:8]}", NEW_ORDER)
    backlog = 300
    await fetch_from(
        own_database,
        "INSERT INTO outbox (id, topic, payload, created_at)"
        " SELECT gen_random_uuid(), 'new_order', '{}'::bytea, now() - interval '1 minute'"
        " FROM generate_series(1, $1)",
        backlog,
    )
    # Two API processes: each its own database pool and broker connection.
    relays = [
        Outbox(sqlalchemy_config(own_database), AmqpPublisher(AMQP_URL, topology), relay_interval=1)
        for _ in range(2)
    ]
    for relay in relays:
        await relay.publisher.connect()
        await relay.measure_backlog()  # a connection in each pool, so that both relays start at once
    try:
        sent = await asyncio.gather(*(relay.relay_once() for relay in relays))
        ids = await drain(topology.queue)
    finally:
        for relay in relays:
            await relay.publisher.close()
            await relay.db.get_engine().dispose()
        connection = await aio_pika.connect(AMQP_URL)
        async with connection, connection.channel() as channel:
            await delete_queues_and_exchanges(channel, topology)

    # Each relay took rows of its own (how the two concurrent scans split them varies), a batch at most.
    assert sum(sent) == backlog
    assert all(0 < count <= Outbox.BATCH for count in sent)
    assert len(ids) == len(set(ids)) == backlog
    [row] = await fetch_from(own_database, "SELECT count(*) AS unsent FROM outbox WHERE sent_at IS NULL")
    assert row["unsent"] == 0


async def next_message(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage | None:
    """The next message of ``queue``, waiting a little for one (a requeued message takes a moment)."""
    for _ in range(20):
        message = await queue.get(fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.1)
    return None


async def drain(queue_name: str) -> list[str]:
    """The message ids of every message in the queue, acknowledged."""
    ids = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        queue = await channel.get_queue(queue_name)
        while (message := await next_message(queue)) is not None:
            ids.append(str(message.message_id))
            await message.ack()
    return ids


async def delete_queues_and_exchanges(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> None:
    for queue in (topology.queue, topology.dead_letter_queue):
        await channel.queue_delete(queue)
    for exchange in (topology.exchange, topology.dead_letter_exchange):
        await channel.exchange_delete(exchange)


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


async def logged_by(worker: Role, order_id: str) -> list[dict[str, Any]]:
    """The worker's log lines of the order, once there is one: it logs after refreshing the cache, where a
    read may already have found the order processed."""
    await eventually(
        lambda: as_awaitable(bool(worker.lines(order_id=order_id))), "the worker to log the order"
    )
    return worker.lines(order_id=order_id)


async def as_awaitable(value: bool) -> bool:
    return value


def send_task(settings: Settings, name: str, args: list[Any], **options: Any) -> None:
    """Send a task to the deployment's worker as a producer would, bypassing the consumer."""
    celery = celery_app(settings)
    try:
        celery.send_task(name, args=args, **options)
    finally:
        celery.close()
