"""The list of revoked login sessions, shared by every API process."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.accounts.repositories import AuthSessionRepository
from app.storage.db import autocommit_session, read_retrying

log = structlog.get_logger(__name__)


class RevokedSessions:
    """Which login sessions are revoked, for every API process at once.

    PostgreSQL holds the truth (``auth_session.revoked_at``); Redis keeps one key per revoked, unexpired
    session so the per-request check is a single round trip. A ``synced`` key records up to when Redis is
    known to hold every revocation. Without it (Redis restarted empty) or without Redis at all the answer
    comes from PostgreSQL. Every ``SYNC_INTERVAL`` one process copies the latest revocations over again, which
    bounds how long a revocation whose Redis write failed can go unseen once Redis is reachable again.
    """

    SYNC_INTERVAL = 5.0
    SYNC_OVERLAP = 60.0  # re-read this much history: clocks differ and commits land after revoked_at

    def __init__(
        self, redis: Redis | None, key_prefix: str, max_lifetime: timedelta, db: SQLAlchemyAsyncConfig
    ) -> None:
        self.redis = redis
        self.db = db
        self.key_prefix = f"{key_prefix}:revoked"
        self.synced_key = f"{self.key_prefix}:synced"
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
                if synced is not None and time.time() - float(synced) < self.SYNC_INTERVAL:
                    return False
                await self._sync(since=float(synced) - self.SYNC_OVERLAP if synced else None)
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

    async def _sync(self, since: float | None) -> None:
        """Copy revocations since ``since`` (everything still unexpired if None) from PostgreSQL to Redis."""
        assert self.redis is not None
        if not await self.redis.set(f"{self.key_prefix}:sync-lock", b"1", nx=True, ex=10):
            return  # another process is at it; this request asks the database meanwhile
        started = time.time()
        oldest = datetime.now(UTC) - self.max_lifetime
        since_at = oldest if since is None else max(oldest, datetime.fromtimestamp(since, UTC))
        async with autocommit_session(self.db) as db:
            revoked = await AuthSessionRepository(session=db).revoked_since(since_at)
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id, expires_at in revoked:
                pipe.set(self._key(session_id), b"1", exat=expires_at)
            pipe.set(self.synced_key, str(started).encode())
            pipe.delete(f"{self.key_prefix}:sync-lock")
            await pipe.execute()
        log.info("revocations synced to redis", count=len(revoked), full=since is None)

    def _format_key(self, session_id: UUID) -> str:
        return f"{self.key_prefix}:{session_id}"
