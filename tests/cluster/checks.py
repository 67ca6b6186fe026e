"""What must hold after every fault, read from the current primary and the RabbitMQ cluster."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg

from cluster.local import LocalCluster
from tests.cluster.load import Figures

DEAD_LETTER_QUEUE = "orders.new_order.dead"
REPORTED: list[str] = []
"""Each fault test's figures, printed at the end of the run."""
PROCESSING_TIMEOUT_SECONDS = 180.0


def dead_letters(cluster: LocalCluster) -> int:
    """Messages in the dead-letter queue."""
    listed = cluster.rabbitmq("list_queues", "name", "messages", "--formatter", "json", "-q")
    return sum(int(queue["messages"]) for queue in json.loads(listed) if queue["name"] == DEAD_LETTER_QUEUE)


def orders_of(cluster: LocalCluster, users: list[str]) -> list[dict[str, Any]]:
    """The users' orders, read on the current primary."""
    primary = cluster.primary()
    assert primary is not None, "no PostgreSQL primary"

    async def read() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(cluster.dsn(primary), timeout=5)
        try:
            rows = await connection.fetch(
                "SELECT id::text, status, version, created_at, processed_at FROM orders"
                " WHERE user_id = ANY($1::uuid[])",
                users,
            )
        finally:
            await connection.close()
        return [dict(row) for row in rows]

    return asyncio.run(read())


def settled_orders(cluster: LocalCluster, figures: Figures) -> list[dict[str, Any]]:
    """The load's orders, once every one of them is processed (or the time is up)."""
    deadline = time.monotonic() + PROCESSING_TIMEOUT_SECONDS
    while True:
        try:
            orders = orders_of(cluster, figures.users)
        except (OSError, asyncpg.PostgresError):
            orders = []  # a primary moving: ask again
        if orders and all(order["processed_at"] is not None for order in orders):
            return orders
        if time.monotonic() > deadline:
            return orders
        time.sleep(1)


def check_nothing_lost(cluster: LocalCluster, figures: Figures, dead_letters_before: int) -> dict[str, int]:
    """Every order answered 201 exists on the primary, processed once; no order exists that no client was told
    of beyond the creates left unresolved; nothing new was dead-lettered. The figures, for the report."""
    orders = {order["id"]: order for order in settled_orders(cluster, figures)}
    told = set(figures.created.values())
    missing = told - orders.keys()
    unprocessed = [order for order in orders.values() if order["processed_at"] is None]
    # One version for the insert, one for the processing, one for a payment: any other count is an effect
    # that happened twice (or not at all).
    twice = [order for order in orders.values() if order["version"] != 2 + (order["status"] == "PAID")]
    unknown = orders.keys() - told
    assert not missing, f"{len(missing)} orders answered 201 are not on the primary: {sorted(missing)[:5]}"
    assert not unprocessed, f"{len(unprocessed)} orders were never processed: {unprocessed[:5]}"
    assert not twice, f"{len(twice)} orders changed other than once per effect: {twice[:5]}"
    assert len(unknown) <= len(figures.unresolved), f"{len(unknown)} orders that no client was told of"
    assert not {o["id"] for o in orders.values() if o["status"] == "PAID"} - figures.paid
    assert dead_letters(cluster) == dead_letters_before, "events were dead-lettered"
    assert not figures.server_errors(), f"the service failed: {figures.server_errors()}"
    return {"orders": len(told), "lost": len(missing), "twice": len(twice), "unknown": len(unknown)}


def processing_lag(orders: list[dict[str, Any]], after: float, until: float) -> float:
    """The longest time, in seconds, from an order's creation to its processing, of the orders created between
    two moments (``time.time()``)."""
    lags = [
        (order["processed_at"] - order["created_at"]).total_seconds()
        for order in orders
        if after <= order["created_at"].timestamp() <= until
    ]
    return round(max(lags), 1) if lags else 0.0
