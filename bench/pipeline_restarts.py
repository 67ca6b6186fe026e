"""Create 1,000 orders while the consumer and worker are stopped, bring them up, kill and restart them
a third of the way through, and check that exactly 1,000 orders end up processed, each exactly once (by
their versions in PostgreSQL, and no order logged as processed twice).

    uv run python bench/pipeline_restarts.py [--orders 1000]

Runs the three roles as production does (see stack.py), in a database, exchange, queues and Redis prefix of
its own that it removes at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
from stack import PROCESSED, Stack, sign_up


async def create_orders(base_url: str, count: int) -> float:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        _, token = await sign_up(http)
        headers = {"Authorization": f"Bearer {token}"}
        body = {"items": [{"name": "bench item", "quantity": 2, "price": "4.99"}]}
        gate = asyncio.Semaphore(32)

        async def create() -> None:
            async with gate:
                response = await http.post("/orders", json=body, headers=headers)
                assert response.status_code == 201, response.text

        started = time.monotonic()
        await asyncio.gather(*(create() for _ in range(count)))
        return time.monotonic() - started


def processed_per_order(log: Path) -> Counter[str]:
    """How many times the worker logged ``order processed`` for each order."""
    counts: Counter[str] = Counter()
    for text in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue  # Celery's banner
        if isinstance(line, dict) and line.get("event") == "order processed":
            counts[line["order_id"]] += 1
    return counts


async def run(deployment: Stack, orders: int) -> bool:
    print(f"logs in {deployment.logs}\ncreating {orders} orders with the consumer and worker stopped ...")
    took = await create_orders(deployment.base_url, orders)
    print(f"  created in {took:.1f} s; processed so far: {await deployment.count(PROCESSED)}")

    print("starting the consumer and the worker ...")
    deployment.worker.start()
    deployment.consumer.start()
    # Checked often: the pipeline works a thousand orders off in about a second.
    await deployment.processed_at_least(orders // 3, within=120, every=0.01)
    print("  a third processed: killing the worker (SIGKILL), stopping the consumer (SIGTERM) ...")
    deployment.worker.stop(signal.SIGKILL)
    deployment.consumer.stop(signal.SIGTERM)
    before_restart = await deployment.count(PROCESSED)
    print(f"  processed when they stopped: {before_restart}; restarting both ...")
    if before_restart == orders:
        print("  all were processed before the stops: nothing was interrupted; run with more --orders")
        return False
    deployment.worker.start()
    deployment.consumer.start()
    took = await deployment.processed_at_least(orders, within=300)
    await asyncio.sleep(2)  # let redelivered duplicates, if any, be handled too

    total = await deployment.count("SELECT count(*) FROM orders")
    processed = await deployment.count(PROCESSED)
    # Each stamp bumps the version (1 when created): 2 is processed exactly once, whatever the logs say.
    once = await deployment.count(f"{PROCESSED} AND version = 2")
    unsent = await deployment.count("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    per_order = processed_per_order(deployment.worker.log)
    twice = sum(1 for times in per_order.values() if times > 1)
    print(
        f"orders: {total}, processed: {processed}, processed exactly once: {once}, unsent events: {unsent}, "
        f"processed per the worker's log: {len(per_order)}, of them more than once: {twice}; "
        f"the last {orders - before_restart} processed {took:.1f} s after the restart"
    )
    # The log may miss a few: a worker killed between a batch's commit and its log lines wrote none, and
    # the batch's second run logs those orders as already processed. The versions are the proof.
    return total == processed == once == orders and unsent == 0 and twice == 0


async def main(orders: int) -> None:
    suffix = secrets.token_hex(4)
    # The worker gets a node name of its own: with Celery's default, celery@<host>, it would die at start
    # while any other worker runs on this machine (RabbitMQ gives that name's control queue to one only).
    # Small database pools: this run checks correctness, not speed, on a PostgreSQL others may share.
    settings = {
        "RATE_LIMIT": "1000000/minute",
        "CELERY_WORKER_HOSTNAME": f"orders-restarts-{suffix}@%h",
        "DATABASE_POOL_SIZE": "5",
    }
    deployment = Stack(settings=settings, suffix=suffix)
    try:
        await deployment.set_up()
        ok = await run(deployment, orders)
    finally:
        await deployment.tear_down()
    print("OK" if ok else "FAILED")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000)
    asyncio.run(main(parser.parse_args().orders))
