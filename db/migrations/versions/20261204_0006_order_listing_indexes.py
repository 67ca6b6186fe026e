"""order listing indexes

The admin's list of every order pages through ix_orders_created, and with a status filter through
ix_orders_status_created; a user's list keeps ix_orders_user_created (0002). Each page, offset or cursor, is
then one range of an index, read in the list's order (created_at, id descending).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 22:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_orders_created", "orders", ["created_at", "id"], unique=False)
    op.create_index("ix_orders_status_created", "orders", ["status", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_orders_status_created", table_name="orders")
    op.drop_index("ix_orders_created", table_name="orders")
