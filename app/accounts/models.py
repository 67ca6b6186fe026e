from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import Enum, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class User(UUIDv7AuditBase):
    __tablename__ = "user_account"

    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(
        Enum(
            Role,
            name="user_role",
            native_enum=False,
            length=16,
            values_callable=lambda roles: [r.value for r in roles],
        ),
        default=Role.USER,
    )


class AuthSession(UUIDv7AuditBase):
    """One login: the family of refresh tokens rotated from it, and every access token issued in it.

    ``refresh_jti`` is the only refresh token that may still be exchanged; presenting an older one means it
    was stolen or replayed, and revokes the whole session. Revoking a session refuses its access tokens too.
    """

    __tablename__ = "auth_session"
    __table_args__ = (
        Index(
            "ix_auth_session_revoked", "revoked_at", "expires_at", postgresql_where="revoked_at IS NOT NULL"
        ),
        Index("ix_auth_session_expires", "expires_at"),  # retention's
    )

    user_id: Mapped[UUID] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    refresh_jti: Mapped[UUID]
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True))
