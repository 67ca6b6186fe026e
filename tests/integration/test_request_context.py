"""A request's id and access line, whichever part of the app answers it: a handler, a middleware that
refuses it, the app-level exception handler (no route matched) or the CORS middleware (a preflight)."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.observability.logging import current_request_id
from tests.support import PASSWORD, POSTGRES_URL, same_stores, serving

ORIGIN = "https://shop.example.com"


async def test_every_answer_carries_its_request_id_and_logs_one_access_line(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    async with serving(same_stores(settings, cors_allowed_origins=(ORIGIN,))) as client:
        answers = {
            "handler": await client.get("/health", headers={"X-Request-ID": "handler"}),
            "handler's error": await client.post("/register", json={}, headers={"X-Request-ID": "invalid"}),
            "authentication": await client.get("/users/me", headers={"X-Request-ID": "authentication"}),
            "no route": await client.get("/no/such/path", headers={"X-Request-ID": "no-route"}),
            "no method": await client.delete("/register", headers={"X-Request-ID": "no-method"}),
            "preflight": await client.options(
                "/orders",
                headers={
                    "X-Request-ID": "preflight",
                    "Origin": "https://evil.example.net",
                    "Access-Control-Request-Method": "GET",
                },
            ),
        }
    logged = capsys.readouterr().err.splitlines()

    assert [response.status_code for response in answers.values()] == [200, 422, 401, 404, 405, 400]
    for answer, response in answers.items():
        request_id = response.headers["x-request-id"]
        assert request_id == response.request.headers["x-request-id"], answer
        access = [line for line in logged if "[app.access]" in line and f"request_id={request_id} " in line]
        assert len(access) == 1, (answer, access)
        assert f"status={response.status_code}" in access[0], answer


async def test_the_error_line_of_a_500_carries_the_request_id(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    # A database without the service's tables: every query fails as a bug would.
    broken = same_stores(
        settings, database_url=POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://")
    )
    async with serving(broken) as client:
        response = await client.post(
            "/register",
            json={"email": "a@example.com", "password": PASSWORD},
            headers={"X-Request-ID": "bug"},
        )

    assert response.status_code == 500
    assert response.headers["x-request-id"] == "bug"
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "unhandled error" in line]
    assert "request_id=bug" in error


async def test_a_request_leaves_its_id_behind_in_no_other_work(settings: Settings) -> None:
    async with serving(settings) as client:  # the app runs in this test's task, as each request in its own
        await client.get("/health", headers={"X-Request-ID": "answered"})
        await client.get("/users/me", headers={"X-Request-ID": "refused"})
        await client.get("/no/such/path", headers={"X-Request-ID": "unrouted"})

        assert current_request_id() is None
