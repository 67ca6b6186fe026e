"""The accounts domain's operations: registration, login and the life of a login session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

from advanced_alchemy.exceptions import IntegrityError
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from app.accounts.models import AuthSession, Role, User
from app.accounts.repositories import AuthSessionRepository, UserRepository
from app.accounts.security import PasswordHasher, SessionToken
from app.storage.db import violates_constraint
from app.web.errors import ConflictError, UnauthorizedError

if TYPE_CHECKING:
    from app.accounts.revocations import RevokedSessions

INVALID_CREDENTIALS = "Incorrect email or password"


class UserService(SQLAlchemyAsyncRepositoryService[User, UserRepository]):
    repository_type = UserRepository

    async def register(
        self, email: str, password: str, hasher: PasswordHasher, role: Role = Role.USER
    ) -> User:
        user = User(email=normalize_email(email), password_hash=await hasher.hash(password), role=role)
        try:
            return await self.create(user, auto_commit=True)
        except IntegrityError as exc:
            if not violates_constraint(exc):  # a dropped connection, say
                raise
            # The unique email is the only constraint a new user can break.
            raise ConflictError(f"An account with the email {user.email} already exists") from None

    async def authenticate(self, email: str, password: str, hasher: PasswordHasher) -> User:
        """The user with these credentials; an unknown email and a wrong password fail alike, as slowly."""
        user = await self.get_one_or_none(email=normalize_email(email))
        if user is None:
            await hasher.verify_decoy(password)
            raise UnauthorizedError(INVALID_CREDENTIALS)
        if not await hasher.verify(user.password_hash, password):
            raise UnauthorizedError(INVALID_CREDENTIALS)
        if hasher.needs_rehash(user.password_hash):
            user.password_hash = await hasher.hash(password)
            user = await self.update(user, auto_commit=True)
        return user


class AuthSessionService(SQLAlchemyAsyncRepositoryService[AuthSession, AuthSessionRepository]):
    repository_type = AuthSessionRepository

    async def open(self, user: User, lifetime: timedelta) -> AuthSession:
        """Start a login session. Expired ones are the retention job's (app.retention) to delete."""
        session = AuthSession(user_id=user.id, refresh_jti=uuid4(), expires_at=datetime.now(UTC) + lifetime)
        return await self.create(session, auto_commit=True)

    async def rotate(
        self, refresh: SessionToken, lifetime: timedelta, revoked: RevokedSessions
    ) -> AuthSession:
        """Exchange the session's current refresh token for a new one.

        The row is locked, so two concurrent exchanges of one token can't both succeed: the second one sees a
        rotated token, which is treated as reuse and revokes the session.
        """
        session = await self.repository.get_one_or_none(id=refresh.session_id, with_for_update=True)
        if session is None or session.revoked_at is not None:
            raise UnauthorizedError("The session has ended; log in again")
        if session.refresh_jti != refresh.token_id:
            await self._revoke(session, revoked)
            raise UnauthorizedError("Refresh token reuse detected; the session is revoked, log in again")
        session.refresh_jti = uuid4()
        session.expires_at = datetime.now(UTC) + lifetime
        return await self.update(session, auto_commit=True)

    async def revoke(self, session_id: UUID, revoked: RevokedSessions) -> None:
        session = await self.repository.get_one_or_none(id=session_id, with_for_update=True)
        if session is not None and session.revoked_at is None:
            await self._revoke(session, revoked)

    async def _revoke(self, session: AuthSession, revoked: RevokedSessions) -> None:
        """Commit the revocation, then tell every API process through the revocation cache."""
        session.revoked_at = datetime.now(UTC)
        await self.update(session, auto_commit=True)
        await revoked.add(session.id, session.expires_at)


def normalize_email(email: str) -> str:
    return email.strip().lower()
