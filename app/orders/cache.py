"""The order read cache: one key per order, in Redis (or memory on the embedded default).

Writes go through ``put`` after their transaction commits and carry the order's version, so an older
version never replaces a newer one, whoever writes last. Concurrent misses of one order in a process wait
for a single database read. Any cache failure is logged and the caller carries on with the database; an
entry that can't be read (garbage, or an older schema) counts as a miss, and is deleted and filled again.

A write whose refresh failed (Redis unreachable, or slower than its timeout) would leave the previous entry
in Redis, stale, until the TTL. So the cache remembers such writes and puts them again, version-guarded (a
late repair never replaces a newer entry), before its next operation that reaches Redis in this process: a
read of that order then sees the repaired entry, or reads the database while Redis still fails. What this
guarantees: after a write, a read in the same process never shows the order's previous state. What it does
not: another process serves the stale entry until this one's next cache operation (any read or write of
any order: in a worker, its next task) repairs it, or until the TTL if this process stops first. It is
bounded: each write is remembered for the TTL from its failure (by then the stale entry expired on its
own), and past ``MAX_UNREFRESHED`` of them the oldest are dropped (left to the TTL). Nothing runs in the
background, so it works the same in the API and in the worker's per-task event loop runs.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from itertools import islice
from typing import NamedTuple
from uuid import UUID

import msgspec
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from app.observability.metrics import metric
from app.orders.models import Order
from app.orders.schemas import OrderRead
from app.storage.stores import AtomicStore, Versioned, split_versioned

log = structlog.get_logger(__name__)

CACHE_READS = Counter(
    metric("cache_reads_total"),
    "Order reads by cache outcome (error: Redis failed, or the entry was unreadable)",
    ["result"],
)

_HITS, _MISSES = CACHE_READS.labels("hit"), CACHE_READS.labels("miss")  # looked up once, not per read

ORDER_CACHE_STORE = "order_cache"
"""The name of the cache's store: its Redis keys are ``<REDIS_KEY_PREFIX>:order_cache:<order id>``."""

_decoder = msgspec.json.Decoder(OrderRead)
_encoder = msgspec.json.Encoder()
# An entry read again is not decoded again: decoding (with the schema's validation) was a measurable share of
# a cached read's CPU (bench/RESULTS.md, Hand-written parts). Keyed by the entry's bytes, so a changed order
# is a new key; an unreadable entry raises and is not kept. The orders it returns are shared by every reader
# of the entry, which OrderRead being frozen (its items a tuple) makes safe.
_decoded = functools.lru_cache(maxsize=1024)(_decoder.decode)


MAX_UNREFRESHED = 10_000
"""Writes whose refresh failed that a process remembers at most (a few MB): the oldest go first."""
REPAIR_BATCH = 32
"""Entries one cache operation repairs at most, so that no request pays for a whole backlog."""


def to_read(order: Order) -> OrderRead:
    return msgspec.convert(order, OrderRead, from_attributes=True)


class _Unrefreshed(NamedTuple):
    order: OrderRead
    version: int
    until: float  # monotonic time by which the stale entry has expired on its own


class OrderCache:
    def __init__(self, store: AtomicStore, ttl_seconds: int, max_unrefreshed: int = MAX_UNREFRESHED) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.max_unrefreshed = max_unrefreshed
        self._loading: dict[UUID, asyncio.Future[OrderRead | None]] = {}
        # Writes whose refresh failed, by order id, the oldest failure first (see the module's docstring).
        self._unrefreshed: OrderedDict[UUID, _Unrefreshed] = OrderedDict()
        self._repairing = False

    def key_of(self, order_id: UUID) -> str:
        """The Redis key of the order's entry, to be read ahead with the request's first Redis call."""
        return self.store.full_key(str(order_id))

    async def get(
        self, order_id: UUID, read_ahead: Mapping[str, bytes | None] | None = None
    ) -> OrderRead | None:
        if self._unrefreshed:  # only after a failed refresh: the hot path stays one dict check
            unrefreshed = order_id in self._unrefreshed
            if not await self._repair(first=order_id):
                CACHE_READS.labels("error").inc()
                return None
            if order_id in self._unrefreshed:  # another request is repairing it right now
                CACHE_READS.labels("miss").inc()
                return None
            if unrefreshed:
                read_ahead = None  # read before the repair
        try:
            key = self.key_of(order_id)
            if read_ahead and key in read_ahead:
                cached = split_versioned(read_ahead[key])
            else:
                cached = await self.store.get_versioned(str(order_id))
            order = _decoded(cached.value) if cached else None
        except RedisError as exc:
            log.warning("order cache unreachable, reading the database", error=str(exc))
            CACHE_READS.labels("error").inc()
            return None
        except ValueError as exc:  # no version, or not an OrderRead (msgspec's errors are ValueErrors)
            log.warning(
                "unreadable order cache entry, reading the database", order_id=str(order_id), error=str(exc)
            )
            CACHE_READS.labels("error").inc()
            await self._discard(order_id)
            return None
        (_HITS if order else _MISSES).inc()
        return order

    async def put(self, order: Order) -> OrderRead:
        """Cache the committed ``order`` (unless a newer version is there already) and return its schema."""
        read = to_read(order)
        await self.put_read(read, order.version)
        return read

    async def put_read(self, order: OrderRead, version: int) -> None:
        """Cache a committed order given as its schema and version."""
        value = _encoder.encode(order)
        await self._refresh(
            [(order, version)],
            lambda: self.store.put_if_newer(str(order.id), version, value, self.ttl_seconds),
        )

    async def put_many(self, orders: Sequence[tuple[OrderRead, int]]) -> None:
        """Cache committed orders, each given with its version, in one pipeline."""
        entries = {str(order.id): Versioned(version, _encoder.encode(order)) for order, version in orders}
        await self._refresh(orders, lambda: self.store.put_many_if_newer(entries, self.ttl_seconds))

    async def _refresh(
        self, orders: Sequence[tuple[OrderRead, int]], write: Callable[[], Awaitable[object]]
    ) -> None:
        """Run ``write`` of the orders' entries; remember the orders if Redis fails (see the docstring)."""
        if self._unrefreshed and not await self._repair():
            for order, version in orders:  # Redis is failing: don't wait for it a second time
                self._remember(order, version)
            return
        try:
            await write()
        except RedisError as exc:
            log.warning(
                "order cache unreachable, entries not refreshed",
                order_ids=[str(order.id) for order, _ in orders],
                error=str(exc),
            )
            for order, version in orders:
                self._remember(order, version)
            return
        if self._unrefreshed:
            for order, version in orders:
                self._forget(order.id, version)

    async def _repair(self, first: UUID | None = None) -> bool:
        """Put the remembered writes (a batch of them, ``first``'s first); False if Redis failed.

        One request repairs at a time; the others go on meanwhile (reading the database for an order that is
        still unrepaired). ``put_if_newer`` makes a repair harmless when a newer entry is there already.
        """
        now = time.monotonic()
        while self._unrefreshed and next(iter(self._unrefreshed.values())).until <= now:
            self._unrefreshed.popitem(last=False)  # its stale entry has expired
        if self._repairing or not self._unrefreshed:
            return True
        self._repairing = True
        try:
            batch = list(islice(self._unrefreshed, REPAIR_BATCH))
            if first is not None and first in self._unrefreshed:
                batch = [first, *(order_id for order_id in batch if order_id != first)]
            repaired = 0
            for order_id in batch:
                if (entry := self._unrefreshed.get(order_id)) is None:
                    continue  # refreshed by a write or a miss meanwhile
                value = _encoder.encode(entry.order)
                try:
                    await self.store.put_if_newer(str(order_id), entry.version, value, self.ttl_seconds)
                except RedisError as exc:
                    log.warning(
                        "order cache unreachable, stale entries not repaired",
                        unrefreshed=len(self._unrefreshed),
                        error=str(exc),
                    )
                    return False
                self._forget(order_id, entry.version)
                repaired += 1
        finally:
            self._repairing = False
        log.info("order cache entries repaired", count=repaired, unrefreshed=len(self._unrefreshed))
        return True

    def _remember(self, order: OrderRead, version: int) -> None:
        """Keep a write whose refresh failed (the newest version of the order) for the TTL from now."""
        if (current := self._unrefreshed.get(order.id)) is not None and current.version > version:
            order, version = current.order, current.version
        self._unrefreshed[order.id] = _Unrefreshed(order, version, time.monotonic() + self.ttl_seconds)
        self._unrefreshed.move_to_end(order.id)
        while len(self._unrefreshed) > self.max_unrefreshed:
            self._unrefreshed.popitem(last=False)

    def _forget(self, order_id: UUID, version: int) -> None:
        """``version`` of the order is in the cache (or a newer one): its older failed writes are repaired."""
        if (current := self._unrefreshed.get(order_id)) is not None and current.version <= version:
            del self._unrefreshed[order_id]

    async def _discard(self, order_id: UUID) -> None:
        """Delete an unreadable entry: with a higher version it would refuse the fresh one."""
        try:
            await self.store.delete(str(order_id))
        except RedisError as exc:
            log.warning("order cache unreachable, entry not deleted", order_id=str(order_id), error=str(exc))

    async def get_or_load(
        self,
        order_id: UUID,
        load: Callable[[], Awaitable[Order | None]],
        read_ahead: Mapping[str, bytes | None] | None = None,
    ) -> OrderRead | None:
        """The cached order, or the one ``load`` reads: once for all concurrent callers in this process."""
        if (cached := await self.get(order_id, read_ahead)) is not None:
            return cached
        if (pending := self._loading.get(order_id)) is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        pending.add_done_callback(_consume_outcome)
        self._loading[order_id] = pending
        try:
            order = await load()
            read = await self.put(order) if order is not None else None
        except Exception as exc:
            pending.set_exception(exc)
            raise
        except BaseException:  # cancelled: the callers waiting on this load are cancelled too
            pending.cancel()
            raise
        finally:
            del self._loading[order_id]
        pending.set_result(read)
        return read


def _consume_outcome(future: asyncio.Future[OrderRead | None]) -> None:
    """Mark a failed load's exception as seen when no one else was waiting for it."""
    if not future.cancelled():
        future.exception()
