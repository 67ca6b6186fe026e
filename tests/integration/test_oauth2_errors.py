"""The token endpoints' errors over HTTP: RFC 6749 §5.2's ``error`` and ``error_description`` beside the
problem document's fields, which is what OAuth2 clients (Swagger UI's Authorize dialog among them) show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from httpx import AsyncClient, Response

from app.config import RateLimit, Settings
from tests.support import JWT_SECRET, PASSWORD, new_email, same_stores, serving, signed_up, token_request

Client = AsyncClient


def oauth2_error(response: Response, status: int, error: str) -> dict[str, Any]:
    """The body of ``response``, checked to be a problem document with OAuth2's ``error`` fields."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["error"] == error
    assert body["error_description"] == body["detail"]
    return body


async def test_a_wrong_password_is_invalid_grant_with_the_reason(client: Client) -> None:
    account = await signed_up(client)

    body = oauth2_error(await token_request(client, account.email, "not the password"), 401, "invalid_grant")

    assert body["detail"] == "Incorrect email or password"


async def test_an_unknown_user_is_invalid_grant_alike(client: Client) -> None:
    body = oauth2_error(await token_request(client, new_email(), PASSWORD), 401, "invalid_grant")

    assert body["detail"] == "Incorrect email or password"


async def test_a_missing_field_is_invalid_request_naming_it(client: Client) -> None:
    response = await client.post("/token", data={"username": new_email()})

    body = oauth2_error(response, 422, "invalid_request")
    assert [error["field"] for error in body["errors"]] == ["password"]


async def test_another_grant_type_is_unsupported_grant_type(client: Client) -> None:
    account = await signed_up(client)
    form = {"grant_type": "client_credentials", "username": account.email, "password": PASSWORD}

    body = oauth2_error(await client.post("/token", data=form), 422, "unsupported_grant_type")

    assert "grant_type" in body["detail"]


async def test_json_sent_to_the_form_is_invalid_request_naming_the_form_type(client: Client) -> None:
    account = await signed_up(client)

    response = await client.post("/token", json={"username": account.email, "password": PASSWORD})

    body = oauth2_error(response, 415, "invalid_request")
    assert "application/x-www-form-urlencoded" in body["detail"]
    assert "application/json" in body["detail"]


async def test_a_garbage_refresh_token_is_invalid_grant(client: Client) -> None:
    response = await client.post("/token/refresh", json={"refresh_token": "not-a-token"})

    body = oauth2_error(response, 401, "invalid_grant")
    assert "malformed" in body["detail"]


async def test_an_access_token_sent_to_refresh_is_invalid_grant_saying_so(client: Client) -> None:
    account = await signed_up(client)

    response = await client.post("/token/refresh", json={"refresh_token": account.tokens["access_token"]})

    body = oauth2_error(response, 401, "invalid_grant")
    assert "not a refresh token" in body["detail"]


async def test_an_expired_refresh_token_is_invalid_grant_saying_so(client: Client) -> None:
    account = await signed_up(client)
    claims = jwt.decode(account.tokens["refresh_token"], options={"verify_signature": False})
    expired = jwt.encode(
        {**claims, "exp": datetime.now(UTC) - timedelta(seconds=5)}, JWT_SECRET, algorithm="HS256"
    )

    body = oauth2_error(
        await client.post("/token/refresh", json={"refresh_token": expired}), 401, "invalid_grant"
    )

    assert "expired" in body["detail"]


async def test_a_reused_refresh_token_is_invalid_grant(client: Client) -> None:
    account = await signed_up(client)
    refresh = {"refresh_token": account.tokens["refresh_token"]}
    assert (await client.post("/token/refresh", json=refresh)).status_code == 200

    body = oauth2_error(await client.post("/token/refresh", json=refresh), 401, "invalid_grant")

    assert "reuse" in body["detail"]


async def test_a_refresh_token_of_an_ended_session_is_invalid_grant(client: Client) -> None:
    account = await signed_up(client)
    assert (await client.post("/logout", headers=account.headers)).status_code == 204

    response = await client.post("/token/refresh", json={"refresh_token": account.tokens["refresh_token"]})

    body = oauth2_error(response, 401, "invalid_grant")
    assert "session has ended" in body["detail"]


async def test_refresh_with_an_unreadable_body_is_invalid_request(client: Client) -> None:
    response = await client.post(
        "/token/refresh", content=b'{"refresh_token": ', headers={"Content-Type": "application/json"}
    )

    oauth2_error(response, 400, "invalid_request")


async def test_refresh_without_its_field_is_invalid_request(client: Client) -> None:
    body = oauth2_error(await client.post("/token/refresh", json={}), 422, "invalid_request")

    assert [error["field"] for error in body["errors"]] == ["refresh_token"]


async def test_a_form_sent_to_refresh_is_invalid_request_naming_json(client: Client) -> None:
    response = await client.post("/token/refresh", data={"refresh_token": "x"})

    body = oauth2_error(response, 415, "invalid_request")
    assert "application/json" in body["detail"]


async def test_too_many_logins_are_temporarily_unavailable(settings: Settings) -> None:
    limited = same_stores(settings, auth_rate_limit=RateLimit(requests=1, unit="minute"))
    async with serving(limited) as client:
        await token_request(client, new_email(), PASSWORD)
        response = await token_request(client, new_email(), PASSWORD)

    oauth2_error(response, 429, "temporarily_unavailable")
    assert int(response.headers["retry-after"]) >= 1


async def test_other_routes_errors_are_plain_problem_documents(client: Client) -> None:
    response = await client.post("/register", json={"email": new_email()})

    assert response.status_code == 422
    assert "error" not in response.json()
    assert "error_description" not in response.json()
