"""The Redis client and the Litestar stores built on it (or in memory, for the embedded default)."""

from __future__ import annotations

from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.stores.registry import StoreRegistry
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.lib.rate_limit import MemoryRateLimitStore, RedisRateLimitStore

RATE_LIMIT_STORES = ("rate_limit", "auth_rate_limit")


def create_redis(url: str, timeout: float) -> Redis:
    """A client that fails fast: a short timeout and one immediate retry (for a pooled connection that a
    Redis restart closed), so a dead Redis costs a request milliseconds, not seconds of backoff."""
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries=1),
        health_check_interval=30,
    )


def create_stores(redis: Redis | None, prefix: str) -> StoreRegistry:
    """One namespace per store, so limiters and caches never share keys."""
    if redis is None:
        return StoreRegistry(
            {name: MemoryRateLimitStore() for name in RATE_LIMIT_STORES},
            default_factory=lambda _: MemoryStore(),
        )
    return StoreRegistry(
        {name: RedisRateLimitStore(redis, namespace=f"{prefix}:{name}") for name in RATE_LIMIT_STORES},
        default_factory=lambda name: RedisStore(redis, namespace=f"{prefix}:{name}"),
    )
