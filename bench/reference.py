"""The two reference servers the benchmark compares the API with, served by granian like the API.

``bench.reference:bare`` answers a small msgspec Struct; ``bench.reference:one_redis_get`` does one Redis
GET first. They are the floor: what Litestar on this machine does with no work, and with one round trip.
"""

from __future__ import annotations

import os

import msgspec
from litestar import Litestar, get
from redis.asyncio import Redis


class Reply(msgspec.Struct):
    id: int
    status: str
    value: str | None = None


@get("/", sync_to_thread=False)
def bare_reply() -> Reply:
    return Reply(id=1, status="ok")


redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@get("/")
async def redis_reply() -> Reply:
    value = await redis.get("bench:reference")
    return Reply(id=1, status="ok", value=value.decode() if value else None)


bare = Litestar([bare_reply], logging_config=None, openapi_config=None)
one_redis_get = Litestar([redis_reply], logging_config=None, openapi_config=None, on_shutdown=[redis.aclose])
