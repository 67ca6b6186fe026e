from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import jwt
import pytest
from litestar.exceptions import NotAuthorizedException

from app.accounts.security import REQUIRED_CLAIMS, TokenCodec, unverified_session_id

SECRET = "unit-test-secret-" + "s" * 48  # long enough for HS512 too


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(
        secret=SECRET,
        issuer="orders",
        audience="orders-api",
        access_ttl=timedelta(minutes=15),
        refresh_ttl=timedelta(days=14),
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "sub": str(uuid4()),
        "jti": str(uuid4()),
        "sid": str(uuid4()),
        "typ": "access",
        "role": "user",
        "iss": "orders",
        "aud": "orders-api",
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def test_issued_tokens_decode_to_the_same_claims(codec: TokenCodec) -> None:
    subject, session, token_id = uuid4(), uuid4(), uuid4()
    issued = codec.issue("refresh", subject=subject, session_id=session, role="admin", token_id=token_id)

    decoded = codec.decode(codec.encode(issued), "refresh")

    assert decoded.sub == str(subject)
    assert decoded.session_id == session
    assert decoded.token_id == token_id
    assert decoded.role == "admin"
    assert decoded.exp - decoded.iat == timedelta(days=14)


def test_a_token_of_the_other_kind_is_refused(codec: TokenCodec) -> None:
    access = codec.issue("access", subject=uuid4(), session_id=uuid4(), role="user", token_id=uuid4())

    with pytest.raises(NotAuthorizedException):
        codec.decode(codec.encode(access), "refresh")


def test_the_payload_holds_only_the_claims(codec: TokenCodec) -> None:
    issued = codec.issue("access", subject=uuid4(), session_id=uuid4(), role="user", token_id=uuid4())
    payload = jwt.decode(codec.encode(issued), options={"verify_signature": False})

    assert set(payload) == {*REQUIRED_CLAIMS, "role"}


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(jwt.encode(claims(), "another-secret-" + "x" * 32, algorithm="HS256"), id="wrong key"),
        pytest.param(jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"), id="wrong audience"),
        pytest.param(jwt.encode(claims(iss="someone-else"), SECRET, algorithm="HS256"), id="wrong issuer"),
        pytest.param(
            jwt.encode(claims(exp=datetime.now(UTC) - timedelta(seconds=1)), SECRET, algorithm="HS256"),
            id="expired",
        ),
        pytest.param(jwt.encode(claims(), SECRET, algorithm="HS512"), id="other algorithm"),
        pytest.param(jwt.encode(claims(), None, algorithm="none"), id="alg none"),
        *(
            pytest.param(
                jwt.encode(claims(**{claim: None}), SECRET, algorithm="HS256"), id=f"without {claim}"
            )
            for claim in REQUIRED_CLAIMS
        ),
        pytest.param(jwt.encode(claims(), SECRET, algorithm="HS256")[:-2] + "xx", id="tampered signature"),
        *(
            pytest.param(
                jwt.encode(claims(**{claim: "not-a-uuid"}), SECRET, algorithm="HS256"),
                id=f"{claim} not a UUID",
            )
            for claim in ("sub", "sid", "jti")
        ),
    ],
)
def test_forged_or_incomplete_tokens_are_refused(codec: TokenCodec, forged: str) -> None:
    with pytest.raises(NotAuthorizedException):
        codec.decode(forged, "access")


def test_a_remembered_token_is_refused_once_it_expires(codec: TokenCodec) -> None:
    short = TokenCodec(
        secret=SECRET,
        issuer="orders",
        audience="orders-api",
        access_ttl=timedelta(seconds=1),
        refresh_ttl=timedelta(1),
    )
    encoded = short.encode(
        short.issue("access", subject=uuid4(), session_id=uuid4(), role="user", token_id=uuid4())
    )
    assert short.decode(encoded, "access").typ == "access"  # verified, and remembered

    time.sleep(1.1)

    with pytest.raises(NotAuthorizedException):
        short.decode(encoded, "access")


def test_the_session_of_a_token_can_be_read_without_verifying_it(codec: TokenCodec) -> None:
    session = uuid4()
    token = codec.encode(
        codec.issue("access", subject=uuid4(), session_id=session, role="user", token_id=uuid4())
    )

    assert unverified_session_id(f"Bearer {token}") == session


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer not.a.jwt", "Bearer a.b", "Basic dXNlcjpwYXNz", "Bearer e30.e30.sig"],
)
def test_anything_else_has_no_session(authorization: str | None) -> None:
    assert unverified_session_id(authorization) is None
