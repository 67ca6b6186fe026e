"""retention indexes

Each batch of the retention job (app/retention.py) finds its rows through one of these.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 18:48:45.133807
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
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
    with op.get_context().autocommit_block():  # the tables are in use
        build_index("ix_auth_session_expires", "auth_session", ["expires_at"])
        build_index("ix_order_idempotency_key_created", "order_idempotency_key", ["created_at"])
        build_index("ix_outbox_sent", "outbox", ["sent_at"], postgresql_where=sa.text("sent_at IS NOT NULL"))


def downgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index("ix_outbox_sent", "outbox")
        drop_index("ix_order_idempotency_key_created", "order_idempotency_key")
        drop_index("ix_auth_session_expires", "auth_session")
