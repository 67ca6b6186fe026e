"""Bearer authentication: who the caller is, and whether their login session has been revoked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from litestar.connection import ASGIConnection
from litestar.openapi.spec import Components, OAuthFlows, SecurityRequirement, SecurityScheme
from litestar.security.jwt import OAuth2PasswordBearerAuth

from app.accounts.models import Role
from app.accounts.revocations import RevokedSessions
from app.lib.rate_limit import read_ahead_values
from app.lib.security import REQUIRED_CLAIMS, SessionToken, TokenCodec

TOKEN_URL = "/token"  # noqa: S105 - a path, not a secret
SECURITY_SCHEME = "BearerToken"
BEARER_REQUIRED: list[SecurityRequirement] = [{SECURITY_SCHEME: []}]
"""The OpenAPI ``security`` of operations that need an access token (the others are public)."""


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
        if token.typ != "access":
            return None  # a refresh token is not a credential for the API
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
        exclude=[r"^/health", r"^/schema", r"^/docs"],
        openapi_security_scheme_name=SECURITY_SCHEME,
        oauth_scopes={},  # OpenAPI requires the key even when the API has no scopes
        description="Log in at /token (OAuth2 password flow) and send the access token as a Bearer token.",
    )
