from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from advanced_alchemy.base import DefaultBase, UUIDv7AuditBase
from advanced_alchemy.types import GUID, DateTimeUTC, JsonB
from sqlalchemy import Enum, ForeignKey, Index, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from app.accounts.models import User


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    CANCELED = "CANCELED"


class Order(UUIDv7AuditBase):
    """An order. Its items are a value fixed at creation, so they live in the row as a JSON list."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_user_created", "user_id", "created_at", "id"),  # a user's pages
        Index("ix_orders_created", "created_at", "id"),  # every user's pages (admins)
        Index("ix_orders_status_created", "status", "created_at", "id"),  # every user's, by status
    )

    user_id: Mapped[UUID] = mapped_column(ForeignKey(User.id, ondelete="RESTRICT"))
    items: Mapped[list[dict[str, Any]]] = mapped_column(JsonB)
    total_price: Mapped[Decimal] = mapped_column(Numeric(16, 2))
    status: Mapped[OrderStatus] = mapped_column(
        Enum(
            OrderStatus,
            name="order_status",
            native_enum=False,
            length=16,
            values_callable=lambda s: [m.value for m in s],
        ),
        default=OrderStatus.PENDING,
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True))
    # Moved by every write, each a statement of OrderRepository that sets it with its change (not the ORM's
    # version counter: no write flushes an Order): the cache keeps only the newest version.
    version: Mapped[int] = mapped_column(default=1)


class OrderIdempotencyKey(DefaultBase):
    """The first order a user created with an ``Idempotency-Key``, and a fingerprint of its request; it
    holds for ``IDEMPOTENCY_KEY_TTL_SECONDS`` after ``created_at``."""

    __tablename__ = "order_idempotency_key"
    __table_args__ = (Index("ix_order_idempotency_key_created", "created_at"),)  # retention's

    user_id: Mapped[UUID] = mapped_column(GUID, ForeignKey(User.id, ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[UUID] = mapped_column(GUID, ForeignKey("orders.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
