"""The Redis client shared by a process's stores, caches and checks."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


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
