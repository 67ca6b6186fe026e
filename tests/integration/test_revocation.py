"""Logout and reuse detection hold in every API process, whatever state Redis is in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from httpx import AsyncClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.accounts.revocations import RevokedSessions
from app.config import Settings
from tests.conftest import forget_redis_keys
from tests.support import (
    REDIS_URL,
    UNREACHABLE_REDIS_URL,
    Account,
    eventually,
    login,
    place_order,
    register,
    same_stores,
    serving,
    signed_up,
)


async def synced_at(settings: Settings) -> float | None:
    """When a sync loop last brought Redis up to date (its ``synced`` mark), unless Redis lost it since."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    async with client:
        synced = await client.get(f"{settings.redis_key_prefix}:revoked:synced")
    return None if synced is None else float(synced)


async def refused(client: AsyncClient, account: Account) -> bool:
    return (await client.get("/users/me", headers=account.headers)).status_code == 401


async def test_a_logout_is_refused_at_once_by_another_process(settings: Settings) -> None:
    async with serving(settings) as first, serving(same_stores(settings)) as second:
        account = await signed_up(first)
        assert (await second.get("/users/me", headers=account.headers)).status_code == 200

        assert (await first.post("/logout", headers=account.headers)).status_code == 204

        assert (await second.get("/users/me", headers=account.headers)).status_code == 401


async def test_redis_restarted_empty_still_refuses_revoked_and_accepts_valid(settings: Settings) -> None:
    async with serving(settings) as client:
        revoked = await signed_up(client)
        valid = await login(client, await register(client))
        await client.post("/logout", headers=revoked.headers)

        forget_redis_keys(settings.redis_key_prefix)

        assert (await client.get("/users/me", headers=revoked.headers)).status_code == 401
        assert (await client.get("/users/me", headers=valid.headers)).status_code == 200
        # the sync loop refills Redis from PostgreSQL: still right on the fast path
        await eventually(lambda: _is_synced(settings), "a sync")
        assert (await client.get("/users/me", headers=revoked.headers)).status_code == 401
        assert (await client.get("/users/me", headers=valid.headers)).status_code == 200


async def test_redis_unreachable_the_whole_account_flow_still_works(settings: Settings) -> None:
    async with serving(same_stores(settings, redis_url=UNREACHABLE_REDIS_URL)) as client:
        account = await signed_up(client)
        other = await signed_up(client)
        assert (await client.get("/users/me", headers=account.headers)).status_code == 200
        refreshed = await client.post(
            "/token/refresh", json={"refresh_token": account.tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200
        account.tokens = refreshed.json()

        assert (await client.post("/logout", headers=account.headers)).status_code == 204

        assert (await client.get("/users/me", headers=account.headers)).status_code == 401
        assert (await client.get("/users/me", headers=other.headers)).status_code == 200


async def test_a_revocation_redis_missed_is_caught_up_once_redis_is_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RevokedSessions, "SYNC_INTERVAL", 0.2)
    async with (
        serving(settings) as healthy,
        serving(same_stores(settings, redis_url=UNREACHABLE_REDIS_URL)) as cut_off,
    ):
        account = await signed_up(healthy)
        await eventually(lambda: _is_synced(settings), "a sync")
        assert (await healthy.get("/users/me", headers=account.headers)).status_code == 200

        # this process can't reach Redis: the revocation lands in PostgreSQL only
        assert (await cut_off.post("/logout", headers=account.headers)).status_code == 204

        # Redis vouches for itself all along, so only a sync can tell the healthy process
        await eventually(lambda: refused(healthy, account), "the sync of the revocation")


async def test_refresh_token_reuse_is_detected_across_processes(settings: Settings) -> None:
    async with serving(settings) as first, serving(same_stores(settings)) as second:
        account = await signed_up(first)
        stolen = account.tokens["refresh_token"]
        assert (await first.post("/token/refresh", json={"refresh_token": stolen})).status_code == 200

        assert (await second.post("/token/refresh", json={"refresh_token": stolen})).status_code == 401

        assert (await first.get("/users/me", headers=account.headers)).status_code == 401


async def test_checks_in_the_database_hold_no_connection_that_the_request_then_waits_for(
    settings: Settings,
) -> None:
    # One pooled connection, and no Redis: every request checks its session in PostgreSQL, then its handler
    # reads PostgreSQL too. A check that kept its connection would leave the handler waiting for the pool.
    lean = same_stores(settings, redis_url=UNREACHABLE_REDIS_URL, database_pool_size=1)
    async with serving(lean) as client:
        account = await signed_up(client)
        order = await place_order(client, account)
        reads = [f"/orders/{order['id']}", "/orders", f"/orders/user/{account.id}", "/users/me"] * 3

        async with asyncio.timeout(10):
            answers = await asyncio.gather(*(client.get(path, headers=account.headers) for path in reads))

        assert [answer.status_code for answer in answers] == [200] * len(reads)


async def test_requests_leave_the_sync_to_the_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short interval, so that the requests below span several syncs; none of them may be a request's doing.
    monkeypatch.setattr(RevokedSessions, "SYNC_INTERVAL", 0.3)
    this_test = asyncio.current_task()  # the app under test runs each request in the task that sends it
    revocation_reads: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if asyncio.current_task() is this_test and "auth_session" in statement:
            revocation_reads.append(statement)

    async with serving(settings) as client:
        account = await signed_up(client)
        # Before Redis is first synced a request asks PostgreSQL whether its session is revoked: not counted.
        await eventually(lambda: _request_then_synced(client, account, settings, since=0.0), "a first sync")
        first_sync = await synced_at(settings)
        assert first_sync is not None
        event.listen(Engine, "before_cursor_execute", record)
        try:
            later = first_sync + RevokedSessions.SYNC_INTERVAL  # a sync at least one interval later
            await eventually(lambda: _request_then_synced(client, account, settings, later), "later syncs")
        finally:
            event.remove(Engine, "before_cursor_execute", record)

    assert revocation_reads == []


async def _is_synced(settings: Settings) -> bool:
    return await synced_at(settings) is not None


async def _request_then_synced(
    client: AsyncClient, account: Account, settings: Settings, since: float
) -> bool:
    """An authenticated request, then whether Redis was synced after ``since``."""
    assert (await client.get("/users/me", headers=account.headers)).status_code == 200
    synced = await synced_at(settings)
    return synced is not None and synced > since
