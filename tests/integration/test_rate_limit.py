"""Rate limits: shared by every process through Redis, 429 with Retry-After, never a 500 without Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from app.config import RateLimit, Settings
from app.storage.redis_pipe import PipelinedRedis
from tests.support import UNREACHABLE_REDIS_URL, new_email, same_stores, serving, token_request

STRICT = RateLimit(requests=3, unit="minute")


async def test_auth_routes_get_429_with_retry_after_past_the_auth_limit(settings: Settings) -> None:
    async with serving(same_stores(settings, auth_rate_limit=STRICT)) as client:
        answers = [await token_request(client, new_email(), "whatever-password") for _ in range(3)]
        assert [response.status_code for response in answers] == [401, 401, 401]
        assert answers[-1].headers["ratelimit-remaining"] == "0"

        limited = await client.post("/register", json={"email": new_email(), "password": "long enough"})

        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.headers["content-type"].startswith("application/problem+json")
        assert limited.json()["status"] == 429


async def test_auth_routes_count_against_the_general_limit_too(settings: Settings) -> None:
    looser = RateLimit(requests=10, unit="minute")  # for the auth routes alone: the general limit is stricter
    async with serving(same_stores(settings, rate_limit=STRICT, auth_rate_limit=looser)) as client:
        answers = [await token_request(client, new_email(), "whatever-password") for _ in range(4)]

    assert [response.status_code for response in answers] == [401, 401, 401, 429]
    assert answers[0].headers["ratelimit-limit"] == "10"  # below both limits: the stricter one's window
    assert answers[0].headers["ratelimit-remaining"] == "9"
    assert answers[-1].headers["ratelimit-limit"] == "3"  # refused by the general limit: its window
    assert answers[-1].headers["ratelimit-remaining"] == "0"


async def test_an_auth_route_counts_both_limits_in_one_redis_call(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(settings) as client:
        await token_request(client, new_email(), "whatever-password")  # connected, script loaded
        scripts: list[str] = []
        send: Callable[..., Awaitable[Any]] = Redis.execute_command  # untyped in redis-py
        send_pipelined = PipelinedRedis.execute

        async def counted(self: Redis, *args: Any, **options: Any) -> Any:
            scripts.extend([str(args[0])] if str(args[0]).startswith("EVAL") else [])
            return await send(self, *args, **options)

        async def counted_pipelined(self: PipelinedRedis, *args: Any) -> Any:
            scripts.extend([str(args[0])] if str(args[0]).startswith("EVAL") else [])
            return await send_pipelined(self, *args)

        monkeypatch.setattr(Redis, "execute_command", counted)
        monkeypatch.setattr(PipelinedRedis, "execute", counted_pipelined)
        response = await token_request(client, new_email(), "whatever-password")

    assert response.status_code == 401
    assert scripts == ["EVALSHA"]


async def test_the_auth_limit_leaves_other_routes_alone(settings: Settings) -> None:
    async with serving(same_stores(settings, auth_rate_limit=STRICT)) as client:
        for _ in range(4):
            await token_request(client, new_email(), "whatever-password")

        response = await client.get("/users/me")

        assert response.status_code == 401  # reached authentication: not rate limited


async def test_the_general_limit_applies_to_every_route_but_health_and_docs(settings: Settings) -> None:
    async with serving(same_stores(settings, rate_limit=STRICT)) as client:
        for _ in range(3):
            assert (await client.get("/users/me")).status_code == 401

        assert (await client.get("/users/me")).status_code == 429
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_the_general_limit_answers_429_with_retry_after_and_its_window(settings: Settings) -> None:
    async with serving(same_stores(settings, rate_limit=STRICT)) as client:
        for _ in range(3):
            await client.get("/users/me")
        limited = await client.get("/users/me")

    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["ratelimit-limit"] == "3"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert limited.headers["ratelimit-policy"] == "3;w=60"
    assert 0 <= int(limited.headers["ratelimit-reset"]) <= 60


async def test_docs_and_the_openapi_document_are_never_rate_limited(settings: Settings) -> None:
    async with serving(same_stores(settings, rate_limit=STRICT, auth_rate_limit=STRICT)) as client:
        statuses = {
            path: [(await client.get(path, follow_redirects=False)).status_code for _ in range(5)]
            for path in ("/docs", "/schema/openapi.json")
        }

    assert all(200 <= status < 400 for answers in statuses.values() for status in answers), statuses


async def test_processes_share_the_counters(settings: Settings) -> None:
    limited = same_stores(settings, auth_rate_limit=STRICT)
    async with serving(limited) as first, serving(same_stores(limited)) as second:
        await token_request(first, new_email(), "whatever-password")
        await token_request(second, new_email(), "whatever-password")
        await token_request(first, new_email(), "whatever-password")

        assert (await token_request(second, new_email(), "whatever-password")).status_code == 429


async def test_without_redis_each_process_still_limits_and_nothing_fails(settings: Settings) -> None:
    async with serving(
        same_stores(settings, redis_url=UNREACHABLE_REDIS_URL, auth_rate_limit=STRICT)
    ) as client:
        statuses = [
            (await token_request(client, new_email(), "whatever-password")).status_code for _ in range(4)
        ]

        assert statuses == [401, 401, 401, 429]


async def test_a_request_refused_by_authentication_still_tells_its_window(settings: Settings) -> None:
    async with serving(same_stores(settings, rate_limit=STRICT)) as client:
        refused = await client.get("/users/me", headers={"Authorization": "Bearer not-a-jwt"})

    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.headers["ratelimit-remaining"] == "2"
    assert refused.headers["ratelimit-policy"] == "3;w=60"


PROXY = "10.0.0.1"


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_window(settings: Settings) -> None:
    behind_proxy = same_stores(settings, rate_limit=STRICT, trusted_proxies=(PROXY,))
    async with serving(behind_proxy, peer=PROXY) as proxy:
        first = [await proxy.get("/users/me", headers={"X-Forwarded-For": "198.51.100.1"}) for _ in range(4)]
        second = await proxy.get("/users/me", headers={"X-Forwarded-For": "198.51.100.2"})

    assert [response.status_code for response in first] == [401, 401, 401, 429]
    assert second.status_code == 401
    assert second.headers["ratelimit-remaining"] == "2"


@pytest.mark.parametrize("trusted_proxies", [(), (PROXY,)])
async def test_a_client_cant_leave_its_window_by_sending_forwarded_for(
    settings: Settings, trusted_proxies: tuple[str, ...]
) -> None:
    direct = same_stores(settings, rate_limit=STRICT, trusted_proxies=trusted_proxies)
    async with serving(direct, peer="192.0.2.7") as client:
        statuses = [
            (await client.get("/users/me", headers={"X-Forwarded-For": f"198.51.100.{n}"})).status_code
            for n in range(4)
        ]

    assert statuses == [401, 401, 401, 429]
