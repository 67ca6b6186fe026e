"""Events committed just before the API stops are published by its shutdown, not left to another process's
relay: against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aio_pika
import asyncpg
import pytest

from app.config import Settings
from app.messaging.outbox import Outbox
from tests.support import (
    AMQP_URL,
    eventually,
    place_order,
    serving,
    signed_up,
)

ORDERS = 20
EVENTS_OF_USER = "SELECT id, sent_at FROM outbox WHERE convert_from(payload, 'UTF8')::jsonb->>'user_id' = $1"


async def events_of(settings: Settings, user_id: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        return await connection.fetch(EVENTS_OF_USER, user_id)
    finally:
        await connection.close()


async def message_ids(queue_name: str) -> list[str]:
    """The message ids of every message ready in the queue, acknowledged."""
    ids = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        queue = await channel.get_queue(queue_name)
        while (message := await queue.get(fail=False)) is not None:
            ids.append(str(message.message_id))
            await message.ack()
    return ids


async def orders_then_stop(settings: Settings) -> str:
    """Place orders through an app, stop it as soon as the last response came back; the user's id.

    The first event is waited for, so that the publisher is connected: the others' publication is left to
    the dispatcher, which has had no time for it when the lifespan ends.
    """
    async with serving(settings) as client:
        alice = await signed_up(client)
        await place_order(client, alice)

        async def published() -> bool:
            return all(event["sent_at"] is not None for event in await events_of(settings, alice.id))

        await eventually(published, "the first event to be published: the publisher is connected")
        await asyncio.gather(*(place_order(client, alice) for _ in range(ORDERS)))
    return alice.id


async def test_events_committed_right_before_shutdown_are_published_by_it(deployment: Settings) -> None:
    user_id = await orders_then_stop(deployment)

    events = await events_of(deployment, user_id)
    assert len(events) == ORDERS + 1
    assert [event["id"] for event in events if event["sent_at"] is None] == []
    queued = await message_ids(f"{deployment.events_exchange}.new_order")
    assert sorted(queued) == sorted(str(event["id"]) for event in events)


async def test_what_the_shutdown_could_not_publish_in_time_stays_for_the_relay(
    deployment: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Outbox, "DRAIN_TIMEOUT", 0.0)  # no time at all: the dispatcher is cut short
    user_id = await orders_then_stop(deployment)

    events = await events_of(deployment, user_id)
    sent = {str(event["id"]) for event in events if event["sent_at"] is not None}
    assert len(sent) < len(events) == ORDERS + 1
    queued = await message_ids(f"{deployment.events_exchange}.new_order")
    assert sent <= set(queued)  # nothing is marked sent that RabbitMQ did not confirm

    monkeypatch.setattr(Outbox, "GRACE", timedelta(0))  # the next process's relay takes them at once
    async with serving(deployment):

        async def relayed() -> bool:
            return all(event["sent_at"] is not None for event in await events_of(deployment, user_id))

        await eventually(relayed, "the relay to publish what the shutdown left")
    queued += await message_ids(f"{deployment.events_exchange}.new_order")
    assert set(queued) == {str(event["id"]) for event in events}  # once at least (twice if cut after confirm)
