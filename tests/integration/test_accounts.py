"""The accounts API, black-box over HTTP against PostgreSQL and Redis."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import argon2
import pytest
from httpx import AsyncClient

from app.config import Settings
from tests.support import PASSWORD, bearer, login, new_email, register, signed_up, token_request

Client = AsyncClient


async def test_register_returns_the_account_without_secrets(client: Client) -> None:
    email = new_email()
    response = await client.post("/register", json={"email": email.upper(), "password": PASSWORD})

    assert response.status_code == 201
    body = response.json()
    assert UUID(body["id"])
    assert body["email"] == email
    assert body["created_at"].endswith("Z")
    assert "password" not in response.text
    assert "hash" not in response.text


@pytest.mark.parametrize("path", ["/register/", "/token/"])
async def test_paths_answer_with_a_trailing_slash(client: Client, path: str) -> None:
    account = await register(client)
    if path == "/register/":
        response = await client.post(path, json={"email": new_email(), "password": PASSWORD})
        assert response.status_code == 201
    else:
        response = await client.post(path, data={"username": account.email, "password": PASSWORD})
        assert response.status_code == 200


async def test_session_paths_answer_with_a_trailing_slash(client: Client) -> None:
    account = await signed_up(client)

    refreshed = await client.post("/token/refresh/", json={"refresh_token": account.tokens["refresh_token"]})
    assert refreshed.status_code == 200
    fresh = bearer(refreshed.json()["access_token"])
    me = await client.get("/users/me/", headers=fresh)
    assert me.status_code == 200
    assert me.json()["id"] == account.id
    assert (await client.post("/logout/", headers=fresh)).status_code == 204
    assert (await client.get("/users/me", headers=fresh)).status_code == 401  # the logout really happened


async def test_duplicate_email_is_a_conflict_whatever_its_case(client: Client) -> None:
    account = await register(client)
    response = await client.post("/register", json={"email": account.email.upper(), "password": PASSWORD})

    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 409
    assert account.email in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "a@b", "password": PASSWORD}, "email"),
        ({"email": f"{'a' * 250}@example.com", "password": PASSWORD}, "email"),
        ({"email": new_email(), "password": "short"}, "password"),
        ({"email": new_email(), "password": "x" * 129}, "password"),
        ({"email": new_email()}, "password"),
        ({"email": new_email(), "password": PASSWORD, "role": "admin"}, "role"),
        ({"email": "nul\x00byte@example.com", "password": PASSWORD}, "email"),  # PostgreSQL can't store it
    ],
)
async def test_invalid_registration_is_422_naming_the_field(
    client: Client, body: dict[str, str], field: str
) -> None:
    response = await client.post("/register", json=body)

    assert response.status_code == 422
    problem = response.json()
    assert problem["status"] == 422
    assert [error["field"] for error in problem["errors"]] == [field]


async def test_password_lengths_at_the_bounds_are_accepted(client: Client) -> None:
    for password in ("x" * 8, "x" * 128):
        response = await client.post("/register", json={"email": new_email(), "password": password})
        assert response.status_code == 201


async def test_login_returns_a_bearer_token_pair(client: Client, settings: Settings) -> None:
    account = await register(client)
    response = await token_request(client, account.email, account.password)

    assert response.status_code == 200
    tokens = response.json()
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == settings.access_token_ttl_seconds
    assert tokens["access_token"] != tokens["refresh_token"]


async def test_login_accepts_the_email_in_any_case(client: Client) -> None:
    account = await register(client)
    response = await token_request(client, account.email.upper(), account.password)
    assert response.status_code == 200


async def test_wrong_password_and_unknown_user_fail_alike(client: Client) -> None:
    account = await register(client)
    wrong_password = await token_request(client, account.email, "not the password")
    unknown_user = await token_request(client, new_email(), account.password)

    for response in (wrong_password, unknown_user):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert wrong_password.json() == unknown_user.json()


@pytest.mark.parametrize(
    "extra",
    [
        {"grant_type": "password"},
        {"grant_type": "", "scope": "", "client_id": "", "client_secret": ""},  # as FastAPI's docs send it
        {"client_id": "swagger-ui", "scope": "read write"},
    ],
)
async def test_login_takes_the_whole_oauth2_password_form(client: Client, extra: dict[str, str]) -> None:
    account = await register(client)
    response = await client.post("/token", data={**extra, "username": account.email, "password": PASSWORD})
    assert response.status_code == 200, response.text


async def test_login_refuses_another_grant_type(client: Client) -> None:
    account = await register(client)
    form = {"grant_type": "client_credentials", "username": account.email, "password": PASSWORD}
    response = await client.post("/token", data=form)
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["grant_type"]


async def test_wrong_password_and_unknown_user_cost_the_same_hashing(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await register(client)
    computed: list[str] = []
    for operation in ("hash", "verify"):
        original = getattr(argon2.PasswordHasher, operation)

        def counted(self: Any, *args: Any, _original: Any = original, _name: str = operation) -> Any:
            computed.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(argon2.PasswordHasher, operation, counted)

    costs = []
    for username, password in [(new_email(), PASSWORD), (account.email, "not the password")] * 2:
        computed.clear()
        assert (await token_request(client, username, password)).status_code == 401
        costs.append(list(computed))

    assert costs == [["verify"]] * 4  # the first unknown email included: no decoy hash made on the way


async def test_login_form_without_password_is_422(client: Client) -> None:
    response = await client.post("/token", data={"username": new_email()})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["password"]


async def test_a_username_postgresql_cant_hold_is_422_not_a_lookup(client: Client) -> None:
    response = await client.post("/token", data={"username": "nul\x00byte@example.com", "password": PASSWORD})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["username"]


async def test_me_is_the_caller(client: Client) -> None:
    account = await signed_up(client)
    response = await client.get("/users/me", headers=account.headers)

    assert response.status_code == 200
    assert response.json()["id"] == account.id
    assert response.json()["email"] == account.email
    assert response.json()["role"] == "user"
    assert set(response.json()) == {"id", "email", "role", "created_at"}


async def test_the_document_declares_every_field_of_a_user_present(client: Client) -> None:
    """A user answered is always whole: no field is optional for a client (a column's default is not)."""
    document = (await client.get("/schema/openapi.json")).json()
    user = document["components"]["schemas"]["UserRead"]

    assert sorted(user["required"]) == sorted(user["properties"]) == ["created_at", "email", "id", "role"]
    assert all("default" not in field for field in user["properties"].values())


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"])
async def test_me_without_a_valid_token_is_401_with_a_challenge(
    client: Client, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get("/users/me", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_refresh_token_is_not_an_access_token(client: Client) -> None:
    account = await signed_up(client)
    response = await client.get("/users/me", headers=bearer(account.tokens["refresh_token"]))
    assert response.status_code == 401


async def test_an_access_token_is_not_a_refresh_token(client: Client) -> None:
    account = await signed_up(client)
    response = await client.post("/token/refresh", json={"refresh_token": account.tokens["access_token"]})
    assert response.status_code == 401


async def test_refresh_rotates_the_pair(client: Client) -> None:
    account = await signed_up(client)
    response = await client.post("/token/refresh", json={"refresh_token": account.tokens["refresh_token"]})

    assert response.status_code == 200
    fresh = response.json()
    assert fresh["refresh_token"] != account.tokens["refresh_token"]
    assert (await client.get("/users/me", headers=bearer(fresh["access_token"]))).status_code == 200
    again = await client.post("/token/refresh", json={"refresh_token": fresh["refresh_token"]})
    assert again.status_code == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(client: Client) -> None:
    account = await signed_up(client)
    stolen = account.tokens["refresh_token"]
    rotated = (await client.post("/token/refresh", json={"refresh_token": stolen})).json()

    reuse = await client.post("/token/refresh", json={"refresh_token": stolen})

    assert reuse.status_code == 401
    assert "reuse" in reuse.json()["detail"]
    assert (
        await client.post("/token/refresh", json={"refresh_token": rotated["refresh_token"]})
    ).status_code == 401
    assert (await client.get("/users/me", headers=bearer(rotated["access_token"]))).status_code == 401
    assert (await client.get("/users/me", headers=account.headers)).status_code == 401


async def test_refresh_with_a_malformed_body_is_422(client: Client) -> None:
    response = await client.post("/token/refresh", json={"token": "x"})
    assert response.status_code == 422


async def test_logout_ends_the_session_and_only_that_session(client: Client) -> None:
    account = await signed_up(client)
    other_session = await login(client, type(account)(email=account.email, password=account.password))

    response = await client.post("/logout", headers=account.headers)

    assert response.status_code == 204
    assert (await client.get("/users/me", headers=account.headers)).status_code == 401
    refresh = await client.post("/token/refresh", json={"refresh_token": account.tokens["refresh_token"]})
    assert refresh.status_code == 401
    assert (await client.get("/users/me", headers=other_session.headers)).status_code == 200


async def test_logout_needs_a_token(client: Client) -> None:
    assert (await client.post("/logout")).status_code == 401
