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
from typing import Any

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def build_index(name: str, table: str, columns: list[str], **kw: Any) -> None:
    """Builds it without blocking writes (CONCURRENTLY, outside a transaction). A failed build leaves an
    invalid index behind: dropping it first is what lets the migration run again."""
    op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
    op.create_index(name, table, columns, postgresql_concurrently=True, if_not_exists=True, **kw)


def drop_index(name: str, table: str) -> None:
    op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    with op.get_context().autocommit_block():  # the table is in use
        build_index("ix_orders_created", "orders", ["created_at", "id"])
        build_index("ix_orders_status_created", "orders", ["status", "created_at", "id"])


def downgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index("ix_orders_status_created", "orders")
        drop_index("ix_orders_created", "orders")
