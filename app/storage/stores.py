"""Stores with the atomic operations the service needs beyond get and set, on Litestar's ``Store`` interface.

- ``hit``: count a request in a fixed window (rate limits), one round trip.
- ``put_if_newer`` / ``get_versioned``: a value tagged with a version that only ever moves forward, so a
  slow writer can't overwrite a newer value with an older one (the order cache).

Each exists for Redis (a Lua script, atomic across every process) and in memory (the embedded default and
the fallback while Redis is unreachable; atomic within the process). Both implement Litestar's public
``Store`` with a client, key prefix, dict and lock of their own, so nothing here depends on how Litestar's
``RedisStore`` and ``MemoryStore`` are built inside.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol, cast

from litestar.stores.base import StorageObject, Store
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

_GET_AND_RENEW = b"""
local data = redis.call('GET', KEYS[1])
if redis.call('TTL', KEYS[1]) > 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return data
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


class AtomicRedisStore(Store):
    """Keys ``<namespace>:<key>`` on ``redis``, which the store uses and never closes.

    ``pipelined`` sends ``hit``, the request path's one Redis call, on the process's pipelined connection
    (app/storage/redis_pipe.py) when it can be made for ``redis``; off, through ``redis`` like the rest.
    """

    __slots__ = ("_get_and_renew", "_hit", "_pipe", "_put_if_newer", "namespace", "redis")

    def __init__(self, redis: Redis, namespace: str, *, pipelined: bool = True) -> None:
        self.redis = redis
        self.namespace = namespace
        self._pipe = PipelinedRedis.of(redis) if pipelined else None
        self._hit = redis.register_script(_HIT)
        self._put_if_newer = redis.register_script(_PUT_IF_NEWER)
        self._get_and_renew = redis.register_script(_GET_AND_RENEW)

    def full_key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        await self.redis.set(
            self.full_key(key), value.encode() if isinstance(value, str) else value, ex=expires_in
        )

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        if renew_for:
            seconds = renew_for if isinstance(renew_for, int) else int(renew_for.total_seconds())
            renewed: bytes | None = await self._get_and_renew(keys=[self.full_key(key)], args=[seconds])
            return renewed
        return cast("bytes | None", await self.redis.get(self.full_key(key)))  # no decode_responses here

    async def delete(self, key: str) -> None:
        await self.redis.delete(self.full_key(key))

    async def delete_all(self) -> None:
        """Every key of the namespace, those of namespaces under it (``<namespace>:...``) included."""
        keys = [
            key async for key in self.redis.scan_iter(match=f"{_glob_escaped(self.namespace)}:*", count=1000)
        ]
        for start in range(0, len(keys), 1000):
            await self.redis.unlink(*keys[start : start + 1000])

    async def exists(self, key: str) -> bool:
        return bool(await self.redis.exists(self.full_key(key)))

    async def expires_in(self, key: str) -> int | None:
        ttl: int = await self.redis.ttl(self.full_key(key))
        return None if ttl < 0 else ttl

    async def hit(
        self, key: str, window_seconds: int, read: Sequence[str] = (), also: Sequence[tuple[str, int]] = ()
    ) -> Window:
        """Also counts, in the same call, the windows ``also`` names by full key and length (another
        limit's, in another store on the same Redis)."""
        keys, args = [self.full_key(key)], [window_seconds]
        for full_key, seconds in also:  # a loop, not generators: this runs on every request
            keys.append(full_key)
            args.append(seconds)
        keys += read
        pipe = self._pipe
        reply = await (pipe.evalsha(self._hit.sha, _HIT, keys, args) if pipe else self._hit(keys, args))
        counted = 2 * len(args)
        return Window(
            int(reply[0]),
            int(reply[1]),
            dict(zip(read, reply[counted:], strict=True)) if read else None,
            tuple((int(reply[i]), int(reply[i + 1])) for i in range(2, counted, 2)) if also else (),
        )

    async def get_versioned(self, key: str) -> Versioned | None:
        return split_versioned(await self.get(key))

    async def put_if_newer(self, key: str, version: int, value: bytes, expires_in: int) -> bool:
        return bool(await self._put_if_newer(keys=[self.full_key(key)], args=[version, value, expires_in]))

    async def put_many_if_newer(self, entries: Mapping[str, Versioned], expires_in: int) -> None:
        # One round trip for the batch, and one more for redis-py's SCRIPT EXISTS check of the pipeline.
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, (version, value) in entries.items():
                args = (version, value, expires_in)
                await self._put_if_newer(keys=[self.full_key(key)], args=args, client=pipe)
            await pipe.execute()


class AtomicMemoryStore(Store):
    """The same operations on a dict of this process, under one lock."""

    PRUNE_AT = 10_000  # entries; past it expired ones are dropped (otherwise only when read)

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._entries: dict[str, StorageObject] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        """How many entries are held, expired ones not dropped yet included."""
        return len(self._entries)

    def full_key(self, key: str) -> str:
        return key

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        data = value.encode() if isinstance(value, str) else value
        async with self._lock:
            self._prune()
            self._entries[key] = StorageObject.new(data=data, expires_in=expires_in)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        async with self._lock:
            stored = self._live(key)
            if stored is None:
                return None
            if renew_for and stored.expires_at is not None:
                stored = self._entries[key] = StorageObject.new(data=stored.data, expires_in=renew_for)
            return stored.data

    async def delete(self, key: str) -> None:
        async with self._lock:
            self._entries.pop(key, None)

    async def delete_all(self) -> None:
        async with self._lock:
            self._entries.clear()

    async def exists(self, key: str) -> bool:
        return await self.get(key) is not None

    async def expires_in(self, key: str) -> int | None:
        async with self._lock:
            stored = self._live(key)
        return None if stored is None or stored.expires_at is None else stored.expires_in

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
            self._entries[key] = StorageObject(data=str(requests).encode(), expires_at=current.expires_at)
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
            self._entries[key] = StorageObject.new(data=_join(version, value), expires_in=expires_in)
            return True

    async def put_many_if_newer(self, entries: Mapping[str, Versioned], expires_in: int) -> None:
        for key, (version, value) in entries.items():
            await self.put_if_newer(key, version, value, expires_in)

    def _prune(self) -> None:
        if len(self._entries) >= self.PRUNE_AT:
            self._entries = {key: stored for key, stored in self._entries.items() if not stored.expired}

    def _live(self, key: str) -> StorageObject | None:
        stored = self._entries.get(key)
        return None if stored is None or stored.expired else stored


ATOMIC_STORES = (AtomicRedisStore, AtomicMemoryStore)
"""The stores that implement ``AtomicStore``; checking these classes is cheap, unlike a runtime protocol."""


def _join(version: int, value: bytes) -> bytes:
    return b"%d|%b" % (version, value)


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def split_versioned(stored: bytes | None) -> Versioned | None:
    """A stored ``<version>|<value>``, as written by ``put_if_newer``; a ValueError for anything else."""
    if stored is None:
        return None
    version, _, value = stored.partition(b"|")
    return Versioned(int(version), value)


def create_stores(redis: Redis | None, prefix: str, *, pipelined: bool = True) -> StoreRegistry:
    """Every store by name, each in its own namespace so limiters and caches never share keys; ``pipelined``
    as ``AtomicRedisStore`` takes it."""
    if redis is None:
        return StoreRegistry(default_factory=lambda _: AtomicMemoryStore())
    return StoreRegistry(
        default_factory=lambda name: AtomicRedisStore(redis, f"{prefix}:{name}", pipelined=pipelined)
    )
