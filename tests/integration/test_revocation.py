"""Logout and reuse detection hold in every API process, whatever state Redis is in."""

from __future__ import annotations

import asyncio

import pytest

from app.accounts.revocations import RevokedSessions
from app.config import Settings
from tests.conftest import forget_redis_keys
from tests.support import (
    UNREACHABLE_REDIS_URL,
    login,
    place_order,
    register,
    same_stores,
    serving,
    signed_up,
)


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
        # the answers above refilled Redis from PostgreSQL: still right on the fast path
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
        assert (
            await healthy.get("/users/me", headers=account.headers)
        ).status_code == 200  # marks Redis synced

        # this process can't reach Redis: the revocation lands in PostgreSQL only
        assert (await cut_off.post("/logout", headers=account.headers)).status_code == 204
        await asyncio.sleep(0.3)

        assert (await healthy.get("/users/me", headers=account.headers)).status_code == 401


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
