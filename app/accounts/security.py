"""Password hashing (Argon2id, off the event loop) and JWT encoding (PyJWT through Litestar's ``Token``)."""

from __future__ import annotations

import base64
import functools
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID, uuid4

import anyio.to_thread
import argon2
import jwt
import msgspec
from litestar.exceptions import NotAuthorizedException
from litestar.security.jwt import Token

from app.config import Settings

if TYPE_CHECKING:
    from litestar.types import Scope

TokenKind = Literal["access", "refresh"]

JWT_ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti", "iss", "aud", "typ", "sid")
MALFORMED_TOKEN = "The token is malformed, or was not issued by this service"  # noqa: S105
EXPIRED_TOKEN: dict[TokenKind, str] = {
    "access": "The access token has expired: exchange the refresh token at /token/refresh, or log in again",
    "refresh": "The refresh token has expired: log in again at /token",
}
WRONG_KIND: dict[TokenKind, str] = {  # by the kind expected
    "access": "A refresh token is not an access token: send the access_token that /token returned",
    "refresh": "An access token is not a refresh token: send the refresh_token that /token returned",
}


class ExpiredTokenError(NotAuthorizedException):
    """A token that was valid once; which kind it is, only its use tells (see ``EXPIRED_TOKEN``)."""

    def __init__(self) -> None:
        super().__init__("The token has expired")


class PasswordHasher:
    """Argon2id hashing that never blocks the event loop.

    Each hash costs tens of milliseconds of CPU and ``memory_cost`` KiB of RAM, so it runs in a worker
    thread and at most ``concurrency`` run at once per process: a burst of logins queues instead of
    starving the CPU and memory of everything else.
    """

    def __init__(self, *, time_cost: int, memory_cost_kib: int, parallelism: int, concurrency: int) -> None:
        self._argon2 = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism, type=argon2.Type.ID
        )
        self._limiter = anyio.CapacityLimiter(concurrency)
        # Made now, once per process: made on the first unknown email, it would make that login slower.
        self._decoy_hash = self._argon2.hash(uuid4().hex)

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordHasher:
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_cost_kib=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
            concurrency=settings.password_hash_concurrency,
        )

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._argon2.hash, password, limiter=self._limiter)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await anyio.to_thread.run_sync(self._verify, password_hash, password, limiter=self._limiter)

    async def verify_decoy(self, password: str) -> None:
        """Spend the time of a real verification, so an unknown account can't be told apart by timing."""
        await self.verify(self._decoy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._argon2.check_needs_rehash(password_hash)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash, password)
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False


@dataclass
class SessionToken(Token):
    """The claims of both token kinds: ``typ`` tells them apart, ``sid`` names the login session."""

    typ: TokenKind = "access"
    sid: str = ""
    role: str = "user"

    def encode(self, secret: str, algorithm: str) -> str:
        # Litestar's Token.encode would also put its empty ``extras`` mapping into the payload.
        claims = {key: value for key, value in asdict(self).items() if value is not None and key != "extras"}
        return jwt.encode(claims, key=secret, algorithm=algorithm)

    @classmethod
    def decode(  # type: ignore[override]
        cls, encoded_token: str, secret: str, algorithm: str, **options: Any
    ) -> SessionToken:
        """Litestar's verification, remembered per token: a client sends the same token request after request,
        and the signature and claims of a token can't change. Only its expiry is checked again each time."""
        frozen = tuple(
            (key, tuple(value) if isinstance(value, list) else value) for key, value in options.items()
        )
        token = _verified(encoded_token, secret, algorithm, frozen)
        if options.get("verify_exp", True) and token.exp <= datetime.now(UTC):
            raise ExpiredTokenError
        return token

    @functools.cached_property  # read on every request; the token itself is remembered (see _verified)
    def session_id(self) -> UUID:
        return UUID(self.sid)

    @property
    def token_id(self) -> UUID:
        return UUID(str(self.jti))


def scope_header(scope: Scope, name: bytes) -> str | None:
    """The first value of the (lower-case) header ``name``, read from the ASGI scope: on the request path,
    where building Litestar's ``Headers`` of the request for one of them costs more than the search."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class _Session(msgspec.Struct):
    sid: UUID


def unverified_session_id(authorization: str | None) -> UUID | None:
    """The ``sid`` claim of a Bearer token, read without verifying anything: only to fetch ahead what the
    token's session will need, in case the token turns out to be valid."""
    if not authorization:
        return None
    payload = authorization.partition(" ")[2].split(".")
    if len(payload) != 3:
        return None
    try:
        return _session_claim.decode(base64.urlsafe_b64decode(payload[1] + "=" * (-len(payload[1]) % 4))).sid
    except (ValueError, msgspec.DecodeError):
        return None


_session_claim = msgspec.json.Decoder(_Session)


@functools.lru_cache(maxsize=4096)
def _verified(
    encoded: str, secret: str, algorithm: str, options: tuple[tuple[str, Any], ...]
) -> SessionToken:
    """Verify once per distinct token (failures raise and are not remembered)."""
    try:
        token = super(SessionToken, SessionToken).decode(encoded, secret, algorithm, **dict(options))
    except NotAuthorizedException as exc:  # Litestar's says "Invalid token" whatever the reason
        if isinstance(exc.__cause__, jwt.ExpiredSignatureError):
            raise ExpiredTokenError from exc
        raise NotAuthorizedException(MALFORMED_TOKEN) from exc
    for claim in (token.sub, token.sid, str(token.jti)):  # ids the request goes on to use as UUIDs
        try:
            UUID(claim)
        except ValueError:
            raise NotAuthorizedException(MALFORMED_TOKEN) from None
    return token


@dataclass(frozen=True)
class TokenCodec:
    """Signs and verifies this service's JWTs: algorithm pinned, all of ``REQUIRED_CLAIMS`` required."""

    secret: str
    issuer: str
    audience: str
    access_ttl: timedelta
    refresh_ttl: timedelta
    algorithm: str = field(default=JWT_ALGORITHM)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCodec:
        return cls(
            secret=settings.jwt_secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl=timedelta(seconds=settings.access_token_ttl_seconds),
            refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
        )

    def issue(
        self, kind: TokenKind, *, subject: UUID, session_id: UUID, role: str, token_id: UUID
    ) -> SessionToken:
        now = datetime.now(UTC)
        return SessionToken(
            exp=now + (self.access_ttl if kind == "access" else self.refresh_ttl),
            iat=now,
            sub=str(subject),
            iss=self.issuer,
            aud=self.audience,
            jti=str(token_id),
            typ=kind,
            sid=str(session_id),
            role=role,
        )

    def encode(self, token: SessionToken) -> str:
        return token.encode(self.secret, self.algorithm)

    def decode(self, encoded: str, kind: TokenKind) -> SessionToken:
        """Verify signature, expiry, issuer, audience and kind, or raise a 401 that says which failed."""
        try:
            token = SessionToken.decode(
                encoded,
                secret=self.secret,
                algorithm=self.algorithm,
                audience=self.audience,
                issuer=self.issuer,
                require_claims=REQUIRED_CLAIMS,
            )
        except ExpiredTokenError:
            raise NotAuthorizedException(EXPIRED_TOKEN[kind]) from None
        if token.typ != kind:
            raise NotAuthorizedException(WRONG_KIND[kind])
        return token
