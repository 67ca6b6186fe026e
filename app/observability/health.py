"""Liveness and readiness probes, cheap enough to be called in a loop.

Readiness opens no connection of its own: RabbitMQ's state is the publisher's connection (open or not), and
PostgreSQL and Redis are pinged through the process's own pool, at most once per ``MAX_AGE_SECONDS``.
Calls in between answer from the last result, and calls made while a ping is under way wait for that one,
so a flood of probes costs each dependency about one ping a second per process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from redis.asyncio import Redis
from sqlalchemy import text

from app.docs.openapi import ServiceOperation
from app.messaging.broker import AmqpPublisher
from app.storage.db import autocommit_engine

CHECK_TIMEOUT_SECONDS = 2.0
MAX_AGE_SECONDS = 1.0
"""How old a ping's result may be before a probe asks for a new one."""

State = Literal["ok", "failing", "not configured"]


class Dependency(msgspec.Struct, omit_defaults=True):
    status: State
    latency_ms: float | None = None
    detail: str | None = None


class Liveness(msgspec.Struct):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct):
    status: Literal["ok", "unavailable"]
    dependencies: dict[str, Dependency]


class CachedCheck:
    """A dependency's ping, run at most once per ``max_age``: the last result is reused until it is that
    old, and callers that come while a ping is under way share it."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ping = ping
        self.max_age = max_age
        self.clock = clock
        self._result: Dependency | None = None
        self._checked_at = 0.0
        self._running: asyncio.Future[Dependency] | None = None

    async def result(self) -> Dependency:
        if self._result is not None and self.clock() - self._checked_at < self.max_age:
            return self._result
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
        # Shielded: a caller that gives up (its client went away) doesn't cancel the others' ping.
        return await asyncio.shield(self._running)

    async def _check(self) -> Dependency:
        try:
            self._result = await _timed(self.ping)
            self._checked_at = self.clock()
            return self._result
        finally:
            self._running = None


class ReadinessChecks:
    """The readiness of one API process's dependencies, through the connections it already holds."""

    def __init__(self, db: SQLAlchemyAsyncConfig, redis: Redis | None, broker: AmqpPublisher | None) -> None:
        self.broker = broker
        self.database = CachedCheck(lambda: _ping_database(db))
        self.redis = CachedCheck(redis.ping) if redis is not None else None

    async def report(self) -> Readiness:
        database, cache = await asyncio.gather(
            self.database.result(),
            self.redis.result()
            if self.redis is not None
            else _not_configured("REDIS_URL is not set: in-memory stores"),
        )
        dependencies = {"database": database, "redis": cache, "rabbitmq": self._broker_state()}
        healthy = all(dependency.status != "failing" for dependency in dependencies.values())
        return Readiness(status="ok" if healthy else "unavailable", dependencies=dependencies)

    def _broker_state(self) -> Dependency:
        if self.broker is None:
            return Dependency(status="not configured", detail="AMQP_URL is not set: events stay in process")
        if not self.broker.ready:  # connecting, or reconnecting: the events wait in the outbox meanwhile
            return Dependency(status="failing", detail="publisher not connected")
        return Dependency(status="ok")


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = {"exclude_from_auth": True}

    @get(
        "/",
        summary="Liveness: the process answers (touches no dependency)",
        operation_class=ServiceOperation,
        operation_id="checkLiveness",
    )
    async def live(self) -> Liveness:
        return Liveness()

    @get(
        "/ready",
        summary="Readiness: PostgreSQL, Redis and RabbitMQ answer",
        description="503 when any configured dependency fails its check; `not configured` ones are skipped. "
        "PostgreSQL and Redis are checked at most once a second: the answer may be a second old.",
        responses={
            HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Readiness, description="A dependency is failing")
        },
        operation_class=ServiceOperation,
        operation_id="checkReadiness",
    )
    async def ready(self, readiness: NamedDependency[ReadinessChecks]) -> Response[Readiness]:
        report = await readiness.report()
        return Response(
            report, status_code=HTTP_200_OK if report.status == "ok" else HTTP_503_SERVICE_UNAVAILABLE
        )


async def _timed(ping: Callable[[], Awaitable[object]]) -> Dependency:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await ping()
    except Exception as exc:  # any failure means not ready; only its type is shown
        return Dependency(status="failing", detail=type(exc).__name__)
    return Dependency(status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def _not_configured(detail: str) -> Dependency:
    return Dependency(status="not configured", detail=detail)


async def _ping_database(db: SQLAlchemyAsyncConfig) -> None:
    """``SELECT 1`` on a connection of the process's pool (autocommit: no BEGIN and ROLLBACK around it)."""
    async with autocommit_engine(db).connect() as connection:
        await connection.execute(text("SELECT 1"))
