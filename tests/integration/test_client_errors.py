"""What a client that gets something wrong is told, over HTTP: every refusal says what to fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import jwt
import pytest
from httpx import AsyncClient, Response

from app.api import MAX_BODY_BYTES
from app.config import Settings
from tests.support import JWT_SECRET, PASSWORD, Account, bearer, new_email, order_body

Client = AsyncClient


def problem(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def registration() -> bytes:
    return json.dumps({"email": new_email(), "password": PASSWORD}).encode()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_json_route_refuses_a_body_of_another_type_naming_json(
    client: Client, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}

    response = await client.post("/register", content=registration(), headers=headers)

    body = problem(response, 415)
    assert body["detail"].startswith("The body must be application/json; got ")
    assert (content_type or "no Content-Type") in body["detail"]


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"]
)
async def test_json_with_parameters_or_a_json_suffix_is_json(client: Client, content_type: str) -> None:
    response = await client.post("/register", content=registration(), headers={"Content-Type": content_type})

    assert response.status_code == 201, response.text


async def test_orders_refuse_a_body_of_another_type(client: Client, alice: Account) -> None:
    headers = {**alice.headers, "Content-Type": "text/plain"}

    response = await client.post("/orders", content=json.dumps(order_body("1.00")), headers=headers)

    assert "application/json" in problem(response, 415)["detail"]


async def test_an_empty_body_needs_no_type(client: Client) -> None:
    response = await client.post("/token", headers={"Content-Length": "0"})

    # what the handler makes of no body at all, not a 415
    assert [error["field"] for error in problem(response, 422)["errors"]] == ["username"]


async def test_a_body_past_the_limit_is_413_whatever_its_type(client: Client) -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)

    response = await client.post("/register", content=body, headers={"Content-Type": "text/plain"})

    assert response.status_code == 413


async def test_the_413_says_the_limit(client: Client) -> None:
    body = b'{"email": "' + b"a" * MAX_BODY_BYTES + b'"}'

    response = await client.post("/register", content=body, headers={"Content-Type": "application/json"})

    detail = problem(response, 413)["detail"]
    assert f"{MAX_BODY_BYTES} bytes" in detail
    assert f"({MAX_BODY_BYTES / 2**20:.3g} MiB)" in detail


@pytest.mark.parametrize("key", ["k" * 256, ""])
async def test_an_invalid_idempotency_key_is_named_as_the_header(
    client: Client, alice: Account, key: str
) -> None:
    headers = {**alice.headers, "Idempotency-Key": key}

    response = await client.post("/orders", json=order_body("1.00"), headers=headers)

    body = problem(response, 422)
    assert [error["field"] for error in body["errors"]] == ["Idempotency-Key"]
    assert body["detail"].startswith("Idempotency-Key: ")


async def test_an_invalid_email_is_told_in_plain_words(client: Client) -> None:
    response = await client.post("/register", json={"email": "ada.example.com", "password": PASSWORD})

    body = problem(response, 422)
    assert body["errors"] == [{"field": "email", "message": "must be an email address, like ada@example.com"}]
    assert body["detail"] == "email: must be an email address, like ada@example.com"


async def unauthorized(client: Client, headers: dict[str, str]) -> str:
    response = await client.get("/users/me", headers=headers)
    assert response.headers["www-authenticate"] == "Bearer"
    return str(problem(response, 401)["detail"])


def re_signed(token: str, **changes: Any) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode({**claims, **changes}, JWT_SECRET, algorithm="HS256")


async def test_every_401_says_why(client: Client, alice: Account, settings: Settings) -> None:
    access, refresh = alice.tokens["access_token"], alice.tokens["refresh_token"]
    expired = re_signed(access, exp=datetime.now(UTC) - timedelta(seconds=5))
    reasons = {
        "no token": await unauthorized(client, {}),
        "malformed": await unauthorized(client, bearer("not.a.token")),
        "expired": await unauthorized(client, bearer(expired)),
        "wrong type": await unauthorized(client, bearer(refresh)),
    }
    assert (await client.post("/logout", headers=alice.headers)).status_code == 204
    reasons["ended"] = await unauthorized(client, alice.headers)

    assert "No access token" in reasons["no token"]
    assert "malformed" in reasons["malformed"]
    assert "expired" in reasons["expired"]
    assert "refresh token is not an access token" in reasons["wrong type"]
    assert "session has ended" in reasons["ended"]
    assert len(set(reasons.values())) == len(reasons)


async def test_a_401_for_an_account_that_is_gone_says_so(
    client: Client, alice: Account, settings: Settings
) -> None:
    assert (await client.get("/users/me", headers=alice.headers)).status_code == 200
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        await connection.execute("DELETE FROM user_account WHERE id = $1", UUID(alice.id))  # and its sessions
    finally:
        await connection.close()

    # "no longer exists" while the revocation cache still vouches for the session, "session has ended ... or
    # its account deleted" once the check reads the database
    assert "account" in await unauthorized(client, alice.headers)
