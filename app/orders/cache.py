"""The order read cache: one key per order, in Redis (or memory on the embedded default).

Writes go through ``put`` after their transaction commits and carry the order's version, so an older
version never replaces a newer one, whoever writes last. Concurrent misses of one order in a process wait
for a single database read. Any cache failure is logged and the caller carries on with the database; an
entry that can't be read (garbage, or an older schema) counts as a miss, and is deleted and filled again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from uuid import UUID

import msgspec
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from app.lib.metrics import metric
from app.lib.stores import AtomicStore, split_versioned
from app.orders.models import Order
from app.orders.schemas import OrderRead

log = structlog.get_logger(__name__)

CACHE_READS = Counter(
    metric("cache_reads_total"),
    "Order reads by cache outcome (error: Redis failed, or the entry was unreadable)",
    ["result"],
)

ORDER_CACHE_STORE = "order_cache"
"""The name of the cache's store: its Redis keys are ``<REDIS_KEY_PREFIX>:order_cache:<order id>``."""

_decoder = msgspec.json.Decoder(OrderRead)
_encoder = msgspec.json.Encoder()


def to_read(order: Order) -> OrderRead:
    return msgspec.convert(order, OrderRead, from_attributes=True)


class OrderCache:
    def __init__(self, store: AtomicStore, ttl_seconds: int) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._loading: dict[UUID, asyncio.Future[OrderRead | None]] = {}

    def key_of(self, order_id: UUID) -> str:
        """The Redis key of the order's entry, to be read ahead with the request's first Redis call."""
        return self.store.full_key(str(order_id))

    async def get(
        self, order_id: UUID, read_ahead: Mapping[str, bytes | None] | None = None
    ) -> OrderRead | None:
        try:
            key = self.key_of(order_id)
            if read_ahead and key in read_ahead:
                cached = split_versioned(read_ahead[key])
            else:
                cached = await self.store.get_versioned(str(order_id))
            order = _decoder.decode(cached.value) if cached else None
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
        CACHE_READS.labels("hit" if order else "miss").inc()
        return order

    async def put(self, order: Order) -> OrderRead:
        """Cache the committed ``order`` (unless a newer version is there already) and return its schema."""
        read = to_read(order)
        await self.put_read(read, order.version)
        return read

    async def put_read(self, order: OrderRead, version: int) -> None:
        """Cache a committed order given as its schema and version."""
        try:
            await self.store.put_if_newer(str(order.id), version, _encoder.encode(order), self.ttl_seconds)
        except RedisError as exc:
            log.warning(
                "order cache unreachable, entry not refreshed", order_id=str(order.id), error=str(exc)
            )

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
