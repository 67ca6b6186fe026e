"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import aio_pika
import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.lib.openapi import ServiceOperation

CHECK_TIMEOUT_SECONDS = 2.0

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


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = {"exclude_from_auth": True}

    @get(
        "/", summary="Liveness: the process answers (touches no dependency)", operation_class=ServiceOperation
    )
    async def live(self) -> Liveness:
        return Liveness()

    @get(
        "/ready",
        summary="Readiness: PostgreSQL, Redis and RabbitMQ answer",
        description="503 when any configured dependency fails its check; `not configured` ones are skipped.",
        responses={
            HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Readiness, description="A dependency is failing")
        },
        operation_class=ServiceOperation,
    )
    async def ready(
        self,
        db_engine: NamedDependency[AsyncEngine],
        redis: NamedDependency[Redis | None],
        settings: NamedDependency[Settings],
    ) -> Response[Readiness]:
        database, cache, broker = await asyncio.gather(
            _check(lambda: _ping_database(db_engine)),
            _check(redis.ping)
            if redis is not None
            else _not_configured("REDIS_URL is not set: in-memory stores"),
            _check(lambda: _ping_broker(settings.amqp_url))
            if settings.amqp_url
            else _not_configured("AMQP_URL is not set: events stay in process"),
        )
        dependencies = {"database": database, "redis": cache, "rabbitmq": broker}
        healthy = all(dependency.status != "failing" for dependency in dependencies.values())
        return Response(
            Readiness(status="ok" if healthy else "unavailable", dependencies=dependencies),
            status_code=HTTP_200_OK if healthy else HTTP_503_SERVICE_UNAVAILABLE,
        )


async def _check(probe: Callable[[], Awaitable[object]]) -> Dependency:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await probe()
    except Exception as exc:  # any failure means not ready; only its type is shown
        return Dependency(status="failing", detail=type(exc).__name__)
    return Dependency(status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def _not_configured(detail: str) -> Dependency:
    return Dependency(status="not configured", detail=detail)


async def _ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _ping_broker(url: str) -> None:
    connection = await aio_pika.connect(url, timeout=CHECK_TIMEOUT_SECONDS)
    await connection.close()
