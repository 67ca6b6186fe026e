"""Rate limits: shared by every process through Redis, 429 with Retry-After, never a 500 without Redis."""

from __future__ import annotations

from app.config import RateLimit, Settings
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
