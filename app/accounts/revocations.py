"""The list of revoked login sessions, shared by every API process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.accounts.repositories import AuthSessionRepository
from app.storage.db import autocommit_session, read_retrying

log = structlog.get_logger(__name__)


class RevokedSessions:
    """Which login sessions are revoked, for every API process at once.

    PostgreSQL holds the truth (``auth_session.revoked_at``); Redis keeps one key per revoked, unexpired
    session so the per-request check is a single round trip. A ``synced`` key records up to when Redis is
    known to hold every revocation. A request reads Redis and nothing else; it asks PostgreSQL only while
    Redis is unreachable or can't vouch for itself (no recent ``synced``: restarted empty, or no process has
    synced for ``STALE_AFTER`` intervals). Keeping Redis up to date is the job of ``run``, a loop in every API
    process: every ``SYNC_INTERVAL`` one of them copies the latest revocations over again, which bounds how
    long a revocation whose Redis write failed goes unseen, and refills a Redis that lost its keys.
    """

    SYNC_INTERVAL = 5.0
    SYNC_OVERLAP = 60.0  # re-read this much history: clocks differ and commits land after revoked_at
    STALE_AFTER = 3  # intervals: a ``synced`` this old means no process syncs any more, trust it no longer
    WAKE = (0.2, 0.4)  # each loop checks for its turn this often (fractions of the interval): one cheap SET
    TURN = 1 - WAKE[1]  # of the interval: no process syncs again sooner, and one does within the interval

    def __init__(
        self, redis: Redis | None, key_prefix: str, max_lifetime: timedelta, db: SQLAlchemyAsyncConfig
    ) -> None:
        self.redis = redis
        self.db = db
        self.key_prefix = f"{key_prefix}:revoked"
        self.synced_key = f"{self.key_prefix}:synced"
        self.turn_key = f"{self.key_prefix}:sync-turn"
        self.max_lifetime = max_lifetime
        # Remembered per session: the key is formatted once, not per request.
        self._key = functools.lru_cache(maxsize=4096)(self._format_key)

    def keys_for(self, session_id: UUID | None) -> list[str]:
        """The Redis keys ``contains`` reads for this session, to read ahead with the request's first call."""
        return [self._key(session_id), self.synced_key] if self.redis is not None and session_id else []

    async def contains(self, session_id: UUID, read_ahead: Mapping[str, bytes | None]) -> bool:
        """Whether the session is revoked; the database is asked only when Redis can't answer."""
        if self.redis is not None:
            try:
                key, synced_key = self._key(session_id), self.synced_key
                revoked, synced = (
                    [read_ahead[key], read_ahead[synced_key]]
                    if key in read_ahead and synced_key in read_ahead
                    else await self.redis.mget(key, synced_key)
                )
                if revoked is not None:
                    return True
                if synced is not None and time.time() - float(synced) < self.SYNC_INTERVAL * self.STALE_AFTER:
                    return False
            except RedisError as exc:
                log.warning("revocation cache unreachable, asking the database", error=str(exc))
        return await read_retrying(lambda: self._revoked_in_database(session_id))

    async def _revoked_in_database(self, session_id: UUID) -> bool:
        async with autocommit_session(self.db) as db:
            return await AuthSessionRepository(session=db).is_revoked(session_id)

    async def add(self, session_id: UUID, expires_at: datetime) -> None:
        """Publish a revocation that is already committed to the database."""
        if self.redis is None:
            return
        try:
            await self.redis.set(self._key(session_id), b"1", exat=expires_at)
        except RedisError as exc:
            log.warning("revocation not cached; the next sync copies it from the database", error=str(exc))

    async def sync(self) -> bool:
        """Copy to Redis the revocations it may lack, unless a process did moments ago: whether this call did.
        Those since the last sync (a little before it), or every unexpired one if Redis lost its keys."""
        assert self.redis is not None
        turn = round(self.SYNC_INTERVAL * self.TURN * 1000)
        if not await self.redis.set(self.turn_key, b"1", nx=True, px=turn):
            return False  # a process synced moments ago
        synced = await self.redis.get(self.synced_key)
        started = time.time()
        oldest = datetime.now(UTC) - self.max_lifetime
        since = oldest if synced is None else max(oldest, _at(float(synced) - self.SYNC_OVERLAP))
        async with autocommit_session(self.db) as db:
            revoked = await AuthSessionRepository(session=db).revoked_since(since)
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id, expires_at in revoked:
                pipe.set(self._key(session_id), b"1", exat=expires_at)
            pipe.set(self.synced_key, str(started).encode())
            await pipe.execute()
        log.info("revocations synced to redis", count=len(revoked), full=synced is None)
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Sync until ``stopping`` is set, the first time at once; failures are logged when they start and
        end."""
        failing = False
        while not stopping.is_set():
            try:
                await self.sync()
            except Exception as exc:  # Redis or the database away: the next turn tries again
                if not failing:
                    log.warning("revocation sync failed; retrying until it works", error=str(exc))
                failing = True
            else:
                if failing:
                    log.info("revocation sync works again")
                failing = False
            wake = self.SYNC_INTERVAL * random.uniform(*self.WAKE)  # noqa: S311 - spreads, no secret
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wake)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The sync loop, while the API runs; none without Redis, where every request asks the database."""
        if self.redis is None:
            yield
            return
        stopping = asyncio.Event()
        task = asyncio.create_task(self.run(stopping))
        try:
            yield
        finally:
            # Cancelled, it stops at once; and if a library swallowed the cancellation in the middle of a
            # sync (asyncio.wait_for can, before Python 3.12), it stops once that sync is over.
            stopping.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _format_key(self, session_id: UUID) -> str:
        return f"{self.key_prefix}:{session_id}"


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class RevocationSyncPlugin(InitPluginProtocol):
    """Runs the revocation sync within the database's lifespan; list it after the SQLAlchemy plugin (see
    ``OutboxPlugin``)."""

    def __init__(self, revoked: RevokedSessions) -> None:
        self.revoked = revoked

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.lifespan.append(self.revoked.running())
        return app_config
