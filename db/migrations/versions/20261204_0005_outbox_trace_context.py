"""outbox trace context

The W3C traceparent of the request that wrote an event, so that its publication continues the request's
trace. Null when tracing is off, and for the rows written before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 22:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("trace_context", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "trace_context")
