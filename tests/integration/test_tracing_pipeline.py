"""One trace per order across real processes: the API (granian), RabbitMQ, the consumer, Celery, the worker.

Each process exports its spans with the console exporter (``OTEL_TRACES_EXPORTER=console``: one JSON object a
line on stdout), into a file of its own; the tests read them back and rebuild the order's trace.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import asyncpg
import httpx

from app.config import Settings
from tests.pipeline import BIN, ROOT, Role, process_env
from tests.proxy import proxy_to
from tests.support import (
    AMQP_URL,
    JWT_SECRET,
    Account,
    eventually,
    free_port,
    place_order,
    signed_up,
    wait_until_healthy,
)

TRACING = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
API = {
    "APP_ENV": "production",
    "WORKERS": "1",  # one process writing spans to the file: its lines never interleave with another's
    "METRICS_PORT": "0",
    "DATABASE_POOL_SIZE": "5",
    "JWT_SECRET": JWT_SECRET,
    "ARGON2_MEMORY_COST_KIB": "8",
    "ARGON2_TIME_COST": "1",
    "ARGON2_PARALLELISM": "1",
}
PROCESS_ORDERS_TASK = "orders.process_orders"


@dataclass(frozen=True)
class Span:
    process: str
    name: str
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER or INTERNAL
    trace_id: str
    span_id: str
    parent_id: str | None
    start: datetime
    end: datetime
    attributes: dict[str, Any]
    links: tuple[str, ...]  # the span ids linked to

    @classmethod
    def parse(cls, process: str, exported: dict[str, Any]) -> Span:
        return cls(
            process=process,
            name=exported["name"],
            kind=exported["kind"].removeprefix("SpanKind."),
            trace_id=exported["context"]["trace_id"],
            span_id=exported["context"]["span_id"],
            parent_id=exported["parent_id"],
            start=datetime.fromisoformat(exported["start_time"]),
            end=datetime.fromisoformat(exported["end_time"]),
            attributes=exported["attributes"],
            links=tuple(link["context"]["span_id"] for link in exported["links"]),
        )

    def __str__(self) -> str:
        return f"{self.name} ({self.kind.lower()}, {self.process})"


@dataclass
class Traced(Role):
    """A role process whose stdout, where its spans are exported, goes to a file apart from its log."""

    spans_path: Path = Path()
    _spans: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log, self._spans = self.log_path.open("ab"), self.spans_path.open("ab")
        self._logged_before = self._log.tell()
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self._spans, stderr=self._log
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        super().stop(sig)
        if self._spans is not None:
            self._spans.close()

    def spans(self) -> list[Span]:
        found = []
        for line in self.spans_path.read_text(errors="replace").splitlines():
            try:
                exported = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if isinstance(exported, dict) and "context" in exported:
                found.append(Span.parse(self.name, exported))
        return found


@dataclass
class Stack:
    """The API, the consumer and the worker, each with tracing on, exporting to files in ``directory``."""

    settings: Settings
    directory: Path
    api_amqp_url: str = AMQP_URL
    consumer_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    roles: list[Traced] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __post_init__(self) -> None:
        env = {**process_env(self.settings), **TRACING, "WORKER_CONCURRENCY": "1"}
        api_env = {**env, **API, "PORT": str(self.port), "AMQP_URL": self.api_amqp_url}
        node = f"{self.settings.celery_queue}@%h"
        commands = {
            "api": ([str(BIN / "python"), "-m", "app.serve"], api_env, "serving metrics"),
            "consumer": (
                [str(BIN / "python"), "-m", "app.consumer"],
                {**env, **self.consumer_env},
                "consuming",
            ),
            "worker": (
                [str(BIN / "celery"), "-A", "app.worker", "worker", "-n", node, "--loglevel", "INFO"],
                env,
                "ready.",
            ),
        }
        for name, (command, role_env, ready) in commands.items():
            log, spans = self.directory / f"{name}.log", self.directory / f"{name}.spans"
            self.roles.append(Traced(name, command, role_env, log, ready, spans_path=spans))

    def start(self) -> None:
        for role in self.roles:
            role.start()
        api = self.role("api")
        assert api.process is not None
        wait_until_healthy(self.url, api.process, api.log)
        for role in self.roles:
            role.wait_ready()

    def stop(self) -> None:
        for role in self.roles:
            role.stop()

    def role(self, name: str) -> Traced:
        return next(role for role in self.roles if role.name == name)

    def spans(self) -> list[Span]:
        return [span for role in self.roles for span in role.spans()]


@asynccontextmanager
async def running(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The stack's processes, stopped whatever happens, and a client of its API."""
    try:
        await asyncio.to_thread(stack.start)
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            yield client
    finally:
        await asyncio.to_thread(stack.stop)


async def processed(client: httpx.AsyncClient, account: Account, order_id: str) -> None:
    async def is_processed() -> bool:
        order = (await client.get(f"/orders/{order_id}", headers=account.headers)).json()
        return order["processed_at"] is not None

    await eventually(is_processed, f"order {order_id} to be processed", within=60)


# What an order's trace holds, as the processes name its spans: the request, the publication of its event, the
# consumer's receipt, then the batch's dispatch and its task, and the order's processing (under the receipt,
# linked to the task).
REQUEST = ("api", "SERVER", r"POST /orders/?")
PUBLISH = ("api", "PRODUCER", r".* send")
RECEIVE = ("consumer", "CONSUMER", r".* receive")
DISPATCH = ("consumer", "INTERNAL", r"orders dispatch")
SEND_TASK = ("consumer", "PRODUCER", rf"apply_async/{PROCESS_ORDERS_TASK}")
RUN_TASK = ("worker", "CONSUMER", rf"run/{PROCESS_ORDERS_TASK}")
PROCESS = ("worker", "INTERNAL", r"process order")
EVERY_SPAN = (REQUEST, PUBLISH, RECEIVE, DISPATCH, SEND_TASK, RUN_TASK, PROCESS)
OWN_SPANS = (REQUEST, PUBLISH, RECEIVE, PROCESS)
"""The spans of an order that came in a batch after another: the batch's are in the first order's trace."""


def matches(span: Span, expected: tuple[str, str, str]) -> bool:
    process, kind, name = expected
    return span.process == process and span.kind == kind and re.fullmatch(name, span.name) is not None


class Trace:
    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans
        self.by_id = {span.span_id: span for span in spans}

    @classmethod
    def of_order(cls, spans: list[Span], order_id: str) -> Trace:
        """The trace of the worker's ``process order`` span of ``order_id`` (empty until it is exported)."""
        trace_ids = {
            span.trace_id
            for span in spans
            if matches(span, PROCESS) and span.attributes.get("order.id") == order_id
        }
        return cls([span for span in spans if span.trace_id in trace_ids])

    def one(self, expected: tuple[str, str, str]) -> Span:
        found = [span for span in self.spans if matches(span, expected)]
        assert len(found) == 1, f"{expected} in\n{self}"
        return found[0]

    def lineage(self, span: Span) -> list[Span]:
        """``span`` and its ancestors, up to the root (or to the first parent not exported)."""
        chain = [span]
        while (parent := self.by_id.get(chain[-1].parent_id or "")) is not None:
            chain.append(parent)
        return chain

    def whole(self, expected: tuple[tuple[str, str, str], ...] = EVERY_SPAN) -> bool:
        """Every span the order's trace should hold has been exported, and every span's parent."""
        return all(any(matches(span, each) for span in self.spans) for each in expected) and all(
            span.parent_id is None or span.parent_id in self.by_id for span in self.spans
        )

    def __str__(self) -> str:
        """The trace as a tree: each span with its process and duration."""
        lines: list[str] = []

        def add(span: Span, depth: int) -> None:
            took = (span.end - span.start).total_seconds() * 1000
            lines.append(f"{'  ' * depth}{span.name}  [{span.process}] {took:.1f} ms")
            for child in sorted(self.spans, key=lambda each: each.start):
                if child.parent_id == span.span_id:
                    add(child, depth + 1)

        for root in [span for span in self.spans if span.parent_id not in self.by_id]:
            add(root, 0)
        return "\n".join(lines)


async def order_trace(
    stack: Stack, order_id: str, expected: tuple[tuple[str, str, str], ...] = EVERY_SPAN
) -> Trace:
    """The order's trace once every process exported its part."""
    found = Trace([])

    async def whole() -> bool:
        nonlocal found
        found = Trace.of_order(await asyncio.to_thread(stack.spans), order_id)
        return found.whole(expected)

    try:
        await eventually(whole, f"the trace of order {order_id}", within=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; so far:\n{found}") from None
    return found


def assert_one_tree_from_the_request_to_the_worker(trace: Trace, order_id: str) -> None:
    request = trace.one(REQUEST)
    assert [span for span in trace.spans if span.parent_id is None] == [request], str(trace)
    assert all(span.parent_id in trace.by_id for span in trace.spans if span.parent_id), str(trace)

    process = trace.one(PROCESS)
    run = trace.one(RUN_TASK)
    chain = trace.lineage(process)
    # The order's processing continues its own receipt (not the batch's task), which its publication caused.
    assert chain[1:3] == [trace.one(RECEIVE), trace.one(PUBLISH)], str(trace)
    assert chain[-1] == request, str(trace)
    assert process.attributes["order.id"] == order_id
    assert run.span_id in process.links  # the batch's task, in the trace of the batch's first order
    task_chain = trace.lineage(run)
    for each in (SEND_TASK, DISPATCH, RECEIVE, PUBLISH, REQUEST):
        assert trace.one(each) in task_chain, f"{each} above the task in\n{trace}"
    assert {span.process for span in trace.spans} == {"api", "consumer", "worker"}


async def test_an_order_is_one_trace_from_its_request_to_the_worker(
    deployment: Settings, tmp_path: Path
) -> None:
    stack = Stack(deployment, tmp_path)
    async with running(stack) as client:
        alice = await signed_up(client)
        order = await place_order(client, alice)
        await processed(client, alice, order["id"])
        trace = await order_trace(stack, order["id"])

    assert_one_tree_from_the_request_to_the_worker(trace, order["id"])
    # The consumer's and the worker's lines of the order carry the order's trace id.
    [dispatched] = stack.role("consumer").lines(event="order dispatched", order_id=order["id"])
    [done] = stack.role("worker").lines(event="order processed", order_id=order["id"])
    assert f"0x{dispatched['trace_id']}" == f"0x{done['trace_id']}" == trace.one(REQUEST).trace_id


async def test_an_event_the_relay_publishes_stays_in_its_request_s_trace(
    deployment: Settings, tmp_path: Path
) -> None:
    with proxy_to(AMQP_URL) as broker:
        stack = Stack(deployment, tmp_path, api_amqp_url=broker.url(AMQP_URL))
        async with running(stack) as client:
            alice = await signed_up(client)
            broker.cut()  # RabbitMQ unreachable from the API: the event waits in the outbox
            order = await place_order(client, alice)
            assert await event_sent_at(deployment, order["id"]) is None
            broker.restore()
            await processed(client, alice, order["id"])
            trace = await order_trace(stack, order["id"])

    assert_one_tree_from_the_request_to_the_worker(trace, order["id"])
    [published] = [
        line
        for line in stack.role("api").lines(event="event published")
        if line["request_id"] == order_request_id(stack, order["id"])
    ]
    assert published["by"] == "relay"  # not by the request: the relay published it, in the request's trace


async def test_a_batch_is_dispatched_in_its_first_order_s_trace_and_linked_to_every_order_s(
    deployment: Settings, tmp_path: Path
) -> None:
    one_batch = {"CONSUMER_BATCH_SIZE": "3", "CONSUMER_BATCH_WAIT_MS": "10000"}  # sent once it holds 3
    stack = Stack(deployment, tmp_path, consumer_env=one_batch)
    async with running(stack) as client:
        alice = await signed_up(client)
        orders = [(await place_order(client, alice))["id"] for _ in range(3)]
        for order_id in orders:
            await processed(client, alice, order_id)
        first, *others = [await order_trace(stack, orders[0])] + [
            await order_trace(stack, order_id, OWN_SPANS) for order_id in orders[1:]
        ]

    dispatch, run = first.one(DISPATCH), first.one(RUN_TASK)
    for trace, order_id in zip([first, *others], orders, strict=True):
        request = trace.one(REQUEST)
        assert [span for span in trace.spans if span.parent_id is None] == [request], str(trace)
        process = trace.one(PROCESS)
        assert trace.lineage(process)[-1] == request, str(trace)
        assert process.attributes["order.id"] == order_id
        assert run.span_id in process.links  # each order's processing names the batch's task
        assert trace.one(RECEIVE).span_id in dispatch.links  # and the batch's dispatch each order's receipt
    for trace in others:  # the batch's spans are in the first order's trace alone
        assert not [span for span in trace.spans if matches(span, DISPATCH) or matches(span, RUN_TASK)]


def order_request_id(stack: Stack, order_id: str) -> str:
    [line] = stack.role("worker").lines(event="order processed", order_id=order_id)
    return str(line["request_id"])


async def event_sent_at(settings: Settings, order_id: str) -> datetime | None:
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        row = await connection.fetchrow(
            "SELECT sent_at FROM outbox WHERE convert_from(payload, 'UTF8')::jsonb->>'order_id' = $1",
            str(UUID(order_id)),
        )
    finally:
        await connection.close()
    assert row is not None
    sent_at: datetime | None = row["sent_at"]
    return sent_at
