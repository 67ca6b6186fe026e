"""A row of a page's query becomes an order by its columns' names, never by their position."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

from app.orders.models import OrderStatus
from app.orders.repositories import _page_row
from app.orders.schemas import OrderItem, OrderRead


def test_each_column_lands_in_the_field_it_is_named_after_whatever_their_order() -> None:
    order = OrderRead(
        id=uuid4(),
        user_id=uuid4(),
        items=(OrderItem(name="tea", quantity=2, price=Decimal("3.00")),),
        total_price=Decimal("6.00"),
        status=OrderStatus.PAID,
        created_at=datetime(2026, 12, 1, 10, tzinfo=UTC),
        updated_at=datetime(2026, 12, 2, 11, tzinfo=UTC),
        processed_at=datetime(2026, 12, 3, 12, tzinfo=UTC),
    )
    row = {  # the schema's fields backwards, as a query listing them in another order returns them
        "total": 1,
        "processed_at": order.processed_at,
        "updated_at": order.updated_at,
        "created_at": order.created_at,
        "status": "PAID",  # asyncpg's text
        "total_price": order.total_price,
        "items": '[{"name": "tea", "quantity": 2, "price": "3.00"}]',
        "user_id": order.user_id,
        "id": order.id,
    }

    assert _page_row(row) == order
