"""What a hostile client can send, through the public HTTP API: oversized and pathological bodies, forged
tokens, and injection text in every string field.

Limits already covered elsewhere: a ``limit`` of a million (tests/integration/test_orders.py), a refresh
token used as an access token (tests/integration/test_accounts.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from httpx import AsyncClient, Response

from app.accounts.security import REQUIRED_CLAIMS
from app.api import MAX_BODY_BYTES
from tests.support import JWT_SECRET, Account, bearer, new_email, order_body, place_order, signed_up

Client = AsyncClient
FAST_SECONDS = 2.0  # a generous bound: refusing malformed input must not cost real work


async def timed(request: Any) -> tuple[Response, float]:
    started = time.perf_counter()
    response = await request
    return response, time.perf_counter() - started


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/register"),
        ("POST", "/token"),
        ("POST", "/token/refresh"),
        ("POST", "/orders"),
        ("PATCH", "/orders/00000000-0000-0000-0000-000000000000"),
    ],
)
async def test_every_body_past_the_limit_is_413(
    client: Client, alice: Account, method: str, path: str
) -> None:
    body = b'{"padding": "' + b"x" * MAX_BODY_BYTES + b'"}'
    headers = {**alice.headers, "Content-Type": "application/json"}

    response = await client.request(method, path, content=body, headers=headers)

    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Each body stays under the size limit: the service has to parse it to refuse it.
PATHOLOGICAL = {
    "deeply nested items": b'{"items": ' + nested(200_000) + b"}",
    "deeply nested unknown field": b'{"items": [], "x": ' + nested(200_000) + b"}",
    "a hundred thousand items": b'{"items": ['
    + b",".join([b'{"name":"x","quantity":1,"price":"1"}'] * 25_000)
    + b"]}",
    "a huge string": b'{"items": [{"name": "' + b"x" * 900_000 + b'", "quantity": 1, "price": "1"}]}',
    "a huge integer": b'{"items": [{"name": "x", "quantity": ' + b"9" * 900_000 + b', "price": "1"}]}',
    "a huge price": b'{"items": [{"name": "x", "quantity": 1, "price": "1' + b"0" * 900_000 + b'"}]}',
    "a huge exponent": b'{"items": [{"name": "x", "quantity": 1, "price": 1e999999999}]}',
    "many keys": b"{" + b",".join(b'"k%d": 1' % n for n in range(80_000)) + b"}",
}


@pytest.mark.parametrize("body", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
async def test_pathological_json_is_refused_fast(client: Client, alice: Account, body: bytes) -> None:
    assert len(body) < MAX_BODY_BYTES
    headers = {**alice.headers, "Content-Type": "application/json"}

    response, seconds = await timed(client.post("/orders", content=body, headers=headers))

    assert response.status_code in (400, 422), response.text[:200]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert seconds < FAST_SECONDS
    assert (await client.get("/orders", headers=alice.headers)).json() == []  # nothing was created


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def forge(claims: dict[str, Any], *, key: str = JWT_SECRET, algorithm: str = "HS256", **changes: Any) -> str:
    values = {**claims, **changes}
    return jwt.encode({k: v for k, v in values.items() if v is not None}, key, algorithm=algorithm)


FORGERIES: dict[str, Any] = {
    "alg none": lambda c: jwt.encode(c, None, algorithm="none"),
    "alg none, no signature dot": lambda c: jwt.encode(c, None, algorithm="none").rstrip("."),
    "wrong key": lambda c: forge(c, key="another-secret-that-is-long-enough-too"),
    "other HMAC algorithm": lambda c: forge(c, algorithm="HS512", key=JWT_SECRET * 2),
    "wrong audience": lambda c: forge(c, aud="someone-else"),
    "wrong issuer": lambda c: forge(c, iss="someone-else"),
    "expired": lambda c: forge(c, exp=datetime.now(UTC) - timedelta(seconds=5)),
    "issued in the future, expired": lambda c: forge(c, iat=datetime.now(UTC) + timedelta(days=1), exp=1),
    "refresh type": lambda c: forge(c, typ="refresh"),
    "unknown type": lambda c: forge(c, typ="admin"),
    "session that is not a UUID": lambda c: forge(c, sid="'; DROP TABLE auth_session; --"),
    **{f"without {claim}": (lambda c, claim=claim: forge({**c, claim: None})) for claim in REQUIRED_CLAIMS},
}


async def test_a_re_signed_copy_of_a_real_token_is_accepted(client: Client, alice: Account) -> None:
    """The forgeries below differ from a working token in the one way each names."""
    copy = forge(claims_of(alice.tokens["access_token"]))
    assert (await client.get("/users/me", headers=bearer(copy))).status_code == 200


@pytest.mark.parametrize("make", FORGERIES.values(), ids=FORGERIES.keys())
async def test_forged_tokens_are_401(client: Client, alice: Account, make: Any) -> None:
    token = make(claims_of(alice.tokens["access_token"]))

    for path in ("/users/me", "/orders"):
        response = await client.get(path, headers=bearer(token))
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


INJECTIONS = [
    "'; DROP TABLE orders; --",
    '" OR 1=1 --',
    "x' UNION SELECT password_hash FROM users --",
    "<script>alert('x')</script>",
    '<img src=x onerror="alert(1)">',
    "{{7*7}} ${jndi:ldap://x} %s%n \\' \\\\",
]


@pytest.mark.parametrize("text", INJECTIONS)
async def test_injection_text_in_every_string_field_is_stored_and_returned_verbatim(
    client: Client, text: str
) -> None:
    # The email keeps its shape (no whitespace, one @) and its case (emails are stored in lower case).
    local = "".join(ch for ch in text.lower() if not ch.isspace() and ch != "@") or "x"
    email, password = f"{local}@example.com", f"{text} password"
    registered = await client.post("/register", json={"email": email, "password": password})
    assert registered.status_code == 201, registered.text
    assert registered.json()["email"] == email

    login = await client.post("/token", data={"username": email, "password": password})
    assert login.status_code == 200, login.text
    headers = {**bearer(login.json()["access_token"]), "Idempotency-Key": text}
    body = {"items": [{"name": text, "quantity": 1, "price": "1.00"}]}
    placed = await client.post("/orders", json=body, headers=headers)
    replayed = await client.post("/orders", json=body, headers=headers)

    assert placed.status_code == replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"  # the key was matched as the same text
    assert replayed.json()["id"] == placed.json()["id"]
    order = placed.json()
    read = await client.get(f"/orders/{order['id']}", headers=headers)
    listed = await client.get("/orders", headers=headers)
    for response in (placed, read):
        assert response.headers["content-type"] == "application/json"
        assert response.json()["items"][0]["name"] == text
    assert [listed_order["items"][0]["name"] for listed_order in listed.json()] == [text]
    assert (await client.get("/users/me", headers=headers)).json()["email"] == email


async def test_the_tables_injection_text_names_are_still_there(client: Client) -> None:
    account = await signed_up(client)
    await client.post(
        "/register", json={"email": f"x'--{new_email()}", "password": "'; DROP TABLE users; --"}
    )
    placed = await place_order(client, account, "3.00")

    assert (await client.get(f"/orders/{placed['id']}", headers=account.headers)).status_code == 200
    other = await client.post("/orders", json=order_body("1.00"), headers=account.headers)
    assert other.status_code == 201
