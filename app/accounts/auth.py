"""Bearer authentication: who the caller is, and whether their login session has been revoked."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.openapi.spec import Components, OAuthFlows, SecurityRequirement, SecurityScheme
from litestar.security.jwt import JWTCookieAuthenticationMiddleware, OAuth2PasswordBearerAuth, Token

from app.accounts.models import Role
from app.accounts.revocations import RevokedSessions
from app.accounts.security import (
    EXPIRED_TOKEN,
    MALFORMED_TOKEN,
    REQUIRED_CLAIMS,
    WRONG_KIND,
    ExpiredTokenError,
    SessionToken,
    TokenCodec,
    scope_header,
)
from app.web.rate_limit import read_ahead_values

TOKEN_URL = "/token"  # noqa: S105 - a path, not a secret
SECURITY_SCHEME = "BearerToken"
BEARER_REQUIRED: list[SecurityRequirement] = [{SECURITY_SCHEME: []}]
"""The OpenAPI ``security`` of operations that need an access token (the others are public)."""
NO_TOKEN = "No access token: send `Authorization: Bearer <access_token>`, with the access_token from /token"  # noqa: S105
SESSION_ENDED = "The session has ended (logged out, revoked, or its account deleted): log in again at /token"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller, taken from the access token alone (no database read per request)."""

    user_id: UUID
    role: Role
    session_id: UUID

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_access(self, owner_id: UUID) -> bool:
        """Users reach their own resources; admins reach everyone's."""
        return owner_id == self.user_id or self.is_admin


class BearerMiddleware(JWTCookieAuthenticationMiddleware):
    """Litestar's JWT middleware, remembering per token what its verification and ``retrieve_user_handler``
    found. A client sends the same token request after request, and neither can change (the handler here
    reads the token alone); working them out every time was a measurable share of a cached read
    (bench/RESULTS.md, Hand-written parts). What can
    change is checked on every request: expiry, and revocation.
    """

    MAX_REMEMBERED = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remembered: dict[str, tuple[Token, Any, float]] = {}
        self.header_name = self.auth_header.lower().encode("latin-1")

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Litestar's, with the header read straight from the scope (see ``scope_header``)."""
        header = scope_header(connection.scope, self.header_name)
        if not (encoded_token := header.partition(" ")[-1] if header else ""):
            if connection.cookies.get(self.auth_cookie_key):
                return await super().authenticate_request(connection)
            raise NotAuthorizedException(NO_TOKEN)
        return await self.authenticate_token(encoded_token, connection)

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        try:
            if (known := self.remembered.get(encoded_token)) is None:
                known = await self.verify(encoded_token, connection)
        except ExpiredTokenError:
            raise NotAuthorizedException(EXPIRED_TOKEN["access"]) from None
        token, user, expires_at = known
        if self.verify_expiry and expires_at <= time.time():
            raise NotAuthorizedException(EXPIRED_TOKEN["access"])
        if self.revoked_token_handler and await self.revoked_token_handler(token, connection):
            raise NotAuthorizedException(SESSION_ENDED)
        return AuthenticationResult(user=user, auth=token)

    async def verify(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> tuple[Token, Any, float]:
        """What Litestar's ``authenticate_token`` does before the revocation check; failures aren't kept."""
        token = self.token_cls.decode(
            encoded_token=encoded_token,
            secret=self.token_secret,
            algorithm=self.algorithm,
            audience=self.token_audience,
            issuer=self.token_issuer,
            require_claims=self.require_claims,
            verify_exp=self.verify_expiry,
            verify_nbf=self.verify_not_before,
            strict_audience=self.strict_audience,
        )
        if not (user := await self.retrieve_user_handler(token, connection)):
            raise NotAuthorizedException(MALFORMED_TOKEN)
        if len(self.remembered) >= self.MAX_REMEMBERED:
            del self.remembered[next(iter(self.remembered))]  # the oldest
        known = self.remembered[encoded_token] = (token, user, token.exp.timestamp())
        return known


class BearerAuth(OAuth2PasswordBearerAuth[Principal, SessionToken]):
    @property
    def openapi_components(self) -> Components:
        """The OAuth2 password flow scheme. Litestar's own also sets fields of the ``apiKey`` and ``http``
        schemes (``in``, ``name``, ``scheme``, ``bearerFormat``) that OpenAPI 3.1 forbids on ``oauth2``."""
        return Components(
            security_schemes={
                self.openapi_security_scheme_name: SecurityScheme(
                    type="oauth2", flows=OAuthFlows(password=self.oauth_flow), description=self.description
                )
            }
        )


def bearer_auth(codec: TokenCodec, revoked: RevokedSessions) -> BearerAuth:
    """Litestar's OAuth2 bearer authentication with this service's token rules and revocation check."""

    async def principal_from_token(
        token: SessionToken, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> Principal | None:
        if token.typ != "access":  # a refresh token is not a credential for the API
            raise NotAuthorizedException(WRONG_KIND["access"])
        try:
            return Principal(user_id=UUID(token.sub), role=Role(token.role), session_id=token.session_id)
        except ValueError:
            return None

    async def is_revoked(token: SessionToken, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        return await revoked.contains(token.session_id, read_ahead_values(connection.scope))

    return BearerAuth(
        token_url=TOKEN_URL,
        token_secret=codec.secret,
        algorithm=codec.algorithm,
        accepted_issuers=[codec.issuer],
        accepted_audiences=[codec.audience],
        require_claims=list(REQUIRED_CLAIMS),
        token_cls=SessionToken,
        retrieve_user_handler=principal_from_token,
        revoked_token_handler=is_revoked,
        authentication_middleware_class=BearerMiddleware,
        exclude=[r"^/health", r"^/schema", r"^/docs"],
        openapi_security_scheme_name=SECURITY_SCHEME,
        oauth_scopes={},  # OpenAPI requires the key even when the API has no scopes
        description="Log in at /token (OAuth2 password flow) and send the access token as a Bearer token.",
    )
