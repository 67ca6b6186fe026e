"""The accounts API: register, log in, refresh, log out, and who am I."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from advanced_alchemy.extensions.litestar.providers import create_service_provider
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, URLEncodedBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.accounts.auth import BEARER_REQUIRED, TOKEN_URL, Principal
from app.accounts.models import AuthSession, User
from app.accounts.revocations import RevokedSessions
from app.accounts.schemas import PasswordGrant, RefreshRequest, Registration, TokenPair, UserRead
from app.accounts.security import PasswordHasher, SessionToken, TokenCodec
from app.accounts.services import AuthSessionService, UserService
from app.docs.openapi import RateLimitedOperation
from app.web.errors import OAUTH2_ERRORS, UnauthorizedError, problem_responses
from app.web.rate_limit import AUTH_RATE_LIMITED

PUBLIC = {"exclude_from_auth": True, AUTH_RATE_LIMITED: True}
TOKEN_ENDPOINT = {**PUBLIC, OAUTH2_ERRORS: True}


class AccountController(Controller):
    tags = ["accounts"]
    dependencies = {
        "users": Provide(create_service_provider(UserService)),
        "sessions": Provide(create_service_provider(AuthSessionService)),
    }

    @post(
        "/register",
        opt=PUBLIC,
        status_code=HTTP_201_CREATED,
        summary="Create an account",
        responses=problem_responses(400, 409, 413, 422, 429),
        operation_class=RateLimitedOperation,
        return_dto=UserRead,
        operation_id="register",
    )
    async def register(
        self,
        data: JSONBody[Registration],
        users: NamedDependency[UserService],
        hasher: NamedDependency[PasswordHasher],
    ) -> User:
        return await users.register(data.email, data.password, hasher)

    @post(
        TOKEN_URL,
        opt=TOKEN_ENDPOINT,
        status_code=HTTP_200_OK,
        summary="Log in (OAuth2 password grant)",
        responses=problem_responses(400, 401, 413, 422, 429, oauth2=True),
        operation_class=RateLimitedOperation,
        operation_id="login",
    )
    async def login(
        self,
        data: URLEncodedBody[PasswordGrant],
        users: NamedDependency[UserService],
        sessions: NamedDependency[AuthSessionService],
        hasher: NamedDependency[PasswordHasher],
        tokens: NamedDependency[TokenCodec],
    ) -> TokenPair:
        user = await users.authenticate(data.username, data.password, hasher)
        session = await sessions.open(user, tokens.refresh_ttl)
        return issue_tokens(tokens, user, session)

    @post(
        f"{TOKEN_URL}/refresh",
        opt=TOKEN_ENDPOINT,
        status_code=HTTP_200_OK,
        summary="Exchange a refresh token for a new token pair",
        description="Refresh tokens are single use: presenting an already exchanged one ends the session.",
        responses=problem_responses(400, 401, 413, 422, 429, oauth2=True),
        operation_class=RateLimitedOperation,
        operation_id="refreshToken",
    )
    async def refresh(
        self,
        data: JSONBody[RefreshRequest],
        users: NamedDependency[UserService],
        sessions: NamedDependency[AuthSessionService],
        tokens: NamedDependency[TokenCodec],
        revoked: NamedDependency[RevokedSessions],
    ) -> TokenPair:
        refresh = tokens.decode(data.refresh_token, "refresh")
        session = await sessions.rotate(refresh, tokens.refresh_ttl, revoked)
        user = await users.get_one_or_none(id=session.user_id)
        if user is None:
            raise UnauthorizedError("The account no longer exists")
        return issue_tokens(tokens, user, session)

    @post(
        "/logout",
        status_code=HTTP_204_NO_CONTENT,
        summary="End the session of the presented access token",
        description="The access token and every token of its session stop working at once.",
        security=BEARER_REQUIRED,
        responses=problem_responses(401, 429),
        operation_class=RateLimitedOperation,
        operation_id="logout",
    )
    async def logout(
        self,
        request: Request[Principal, SessionToken, Any],
        sessions: NamedDependency[AuthSessionService],
        revoked: NamedDependency[RevokedSessions],
    ) -> None:
        await sessions.revoke(request.user.session_id, revoked)

    @get(
        "/users/me",
        summary="The calling user",
        security=BEARER_REQUIRED,
        responses=problem_responses(401, 429),
        operation_class=RateLimitedOperation,
        return_dto=UserRead,
        operation_id="getCurrentUser",
    )
    async def me(
        self, request: Request[Principal, SessionToken, Any], users: NamedDependency[UserService]
    ) -> User:
        user = await users.get_one_or_none(id=request.user.user_id)
        if user is None:
            raise UnauthorizedError("The account no longer exists")
        return user


def issue_tokens(tokens: TokenCodec, user: User, session: AuthSession) -> TokenPair:
    """An access token and the session's current refresh token."""
    access = tokens.issue("access", subject=user.id, session_id=session.id, role=user.role, token_id=uuid4())
    refresh = tokens.issue(
        "refresh", subject=user.id, session_id=session.id, role=user.role, token_id=session.refresh_jti
    )
    return TokenPair(
        access_token=tokens.encode(access),
        refresh_token=tokens.encode(refresh),
        expires_in=int(tokens.access_ttl.total_seconds()),
    )
