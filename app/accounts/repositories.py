"""Repositories of the accounts domain."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import select

from app.accounts.models import AuthSession, User


class UserRepository(SQLAlchemyAsyncRepository[User]):
    model_type = User


class AuthSessionRepository(SQLAlchemyAsyncRepository[AuthSession]):
    model_type = AuthSession

    async def is_revoked(self, session_id: UUID) -> bool:
        """True for a revoked session, and for one that no longer exists."""
        row = (
            await self.session.execute(select(AuthSession.revoked_at).where(AuthSession.id == session_id))
        ).first()
        return row is None or row.revoked_at is not None

    async def revoked_since(self, since: datetime) -> list[tuple[UUID, datetime]]:
        """Sessions revoked after ``since`` that have not expired yet, with their expiry."""
        rows = await self.session.execute(
            select(AuthSession.id, AuthSession.expires_at).where(
                AuthSession.revoked_at >= since, AuthSession.expires_at > datetime.now(UTC)
            )
        )
        return [(session_id, expires_at) for session_id, expires_at in rows.tuples()]
