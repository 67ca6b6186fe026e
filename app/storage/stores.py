"""Litestar stores with the atomic operations the service needs beyond get and set.

- ``hit``: count a request in a fixed window (rate limits), one round trip.
- ``put_if_newer`` / ``get_versioned``: a value tagged with a version that only ever moves forward, so a
  slow writer can't overwrite a newer value with an older one (the order cache).

Each exists for Redis (a Lua script, atomic across every process) and in memory (the embedded default and
the fallback while Redis is unreachable; atomic within the process).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from litestar.stores.base import StorageObject
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.stores.registry import StoreRegistry
from redis.asyncio import Redis

from app.storage.redis_pipe import PipelinedRedis

# KEYS: the #ARGV windows to count (ARGV: each one's length in seconds), then the keys to read.
# The reply: each window's count and seconds left, then the values read.
_HIT = b"""
local reply = {}
local windows = #ARGV
for i = 1, windows do
    local count = redis.call('INCR', KEYS[i])
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 0 then
        redis.call('EXPIRE', KEYS[i], ARGV[i])
        ttl = tonumber(ARGV[i])
    end
    reply[2 * i - 1] = count
    reply[2 * i] = ttl
end
for i = windows + 1, #KEYS do
    reply[windows + i] = redis.call('GET', KEYS[i])
end
return reply
"""

_PUT_IF_NEWER = b"""
local current = redis.call('GET', KEYS[1])
if current then
    local version = tonumber(string.match(current, '^(%d+)|'))
    if version and version >= tonumber(ARGV[1]) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


class Window(NamedTuple):
    """One client's fixed window after counting a request, and the values read along (see ``hit``)."""

    requests: int
    resets_in: int
    read: dict[str, bytes | None] | None = None
    also: tuple[tuple[int, int], ...] = ()
    """``(requests, resets_in)`` of the windows counted along (``AtomicRedisStore.hit``'s ``also``)."""


class Versioned(NamedTuple):
    version: int
    value: bytes


class AtomicStore(Protocol):
    async def hit(self, key: str, window_seconds: int, read: Sequence[str] = ()) -> Window:
        """Count a request; Redis also reads the (full) keys ``read`` in the same round trip."""
        ...

    def full_key(self, key: str) -> str:
        """The Redis key this store keeps ``key`` under."""
        ...

    async def get_versioned(self, key: str) -> Versioned | None:
        """The value ``put_if_newer`` stored; a ValueError if what is stored has no version."""
        ...

    async def put_if_newer(self, key: str, version: int, value: bytes, expires_in: int) -> bool: ...

    async def put_many_if_newer(self, entries: Mapping[str, Versioned], expires_in: int) -> None:
        """``put_if_newer`` of each entry, by key; on Redis in one pipeline."""
        ...

    async def delete(self, key: str) -> None: ...


class AtomicRedisStore(RedisStore):
    __slots__ = ("_hit", "_put_if_newer")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hit = self._redis.register_script(_HIT)
        self._put_if_newer = self._redis.register_script(_PUT_IF_NEWER)

    async def hit(
        self, key: str, window_seconds: int, read: Sequence[str] = (), also: Sequence[tuple[str, int]] = ()
    ) -> Window:
        """Also counts, in the same call, the windows ``also`` names by full key and length (another
        limit's, in another store on the same Redis)."""
        keys, args = [self._make_key(key)], [window_seconds]
        for full_key, seconds in also:  # a loop, not generators: this runs on every request
            keys.append(full_key)
            args.append(seconds)
        keys += read
        # The request path's one Redis call: pipelined with other requests' (see app/storage/redis_pipe.py).
        pipe = PipelinedRedis.of(self._redis)
        reply = await (pipe.evalsha(self._hit.sha, _HIT, keys, args) if pipe else self._hit(keys, args))
        counted = 2 * len(args)
        return Window(
            int(reply[0]),
            int(reply[1]),
            dict(zip(read, reply[counted:], strict=True)) if read else None,
            tuple((int(reply[i]), int(reply[i + 1])) for i in range(2, counted, 2)) if also else (),
        )

    def full_key(self, key: str) -> str:
        return self._make_key(key)

    async def get_versioned(self, key: str) -> Versioned | None:
        return split_versioned(await self.get(key))

    async def put_if_newer(self, key: str, version: int, value: bytes, expires_in: int) -> bool:
        return bool(await self._put_if_newer(keys=[self._make_key(key)], args=[version, value, expires_in]))

    async def put_many_if_newer(self, entries: Mapping[str, Versioned], expires_in: int) -> None:
        # One round trip for the batch, and one more for redis-py's SCRIPT EXISTS check of the pipeline.
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, (version, value) in entries.items():
                args = (version, value, expires_in)
                await self._put_if_newer(keys=[self._make_key(key)], args=args, client=pipe)
            await pipe.execute()


class AtomicMemoryStore(MemoryStore):
    PRUNE_AT = 10_000  # entries; past it expired ones are dropped (MemoryStore drops them only when read)

    __slots__ = ()

    async def hit(self, key: str, window_seconds: int, read: Sequence[str] = ()) -> Window:
        """Counts only: the keys to read belong to Redis, which this store stands in for."""
        async with self._lock:
            self._prune()
            current = self._live(key)
            if current is None:
                current = StorageObject(
                    data=b"0", expires_at=datetime.now(UTC) + timedelta(seconds=window_seconds)
                )
            requests = int(current.data) + 1
            self._store[key] = StorageObject(data=str(requests).encode(), expires_at=current.expires_at)
            return Window(requests, max(current.expires_in, 0))

    async def get_versioned(self, key: str) -> Versioned | None:
        return split_versioned(await self.get(key))

    async def put_if_newer(self, key: str, version: int, value: bytes, expires_in: int) -> bool:
        async with self._lock:
            self._prune()
            current = self._live(key)
            stored = split_versioned(current.data) if current else None
            if stored is not None and stored.version >= version:
                return False
            self._store[key] = StorageObject.new(data=_join(version, value), expires_in=expires_in)
            return True

    async def put_many_if_newer(self, entries: Mapping[str, Versioned], expires_in: int) -> None:
        for key, (version, value) in entries.items():
            await self.put_if_newer(key, version, value, expires_in)

    def full_key(self, key: str) -> str:
        return key

    def _prune(self) -> None:
        if len(self._store) >= self.PRUNE_AT:
            self._store = {key: stored for key, stored in self._store.items() if not stored.expired}

    def _live(self, key: str) -> StorageObject | None:
        stored = self._store.get(key)
        return None if stored is None or stored.expired else stored


ATOMIC_STORES = (AtomicRedisStore, AtomicMemoryStore)
"""The stores that implement ``AtomicStore``; checking these classes is cheap, unlike a runtime protocol."""


def _join(version: int, value: bytes) -> bytes:
    return b"%d|%b" % (version, value)


def split_versioned(stored: bytes | None) -> Versioned | None:
    """A stored ``<version>|<value>``, as written by ``put_if_newer``; a ValueError for anything else."""
    if stored is None:
        return None
    version, _, value = stored.partition(b"|")
    return Versioned(int(version), value)


def create_stores(redis: Redis | None, prefix: str) -> StoreRegistry:
    """Every store by name, each in its own namespace so limiters and caches never share keys."""
    if redis is None:
        return StoreRegistry(default_factory=lambda _: AtomicMemoryStore())
    return StoreRegistry(default_factory=lambda name: AtomicRedisStore(redis, namespace=f"{prefix}:{name}"))
