"""Repositories of the orders domain."""

from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository

from app.orders.models import Order, OrderIdempotencyKey


class OrderRepository(SQLAlchemyAsyncRepository[Order]):
    model_type = Order


class IdempotencyKeyRepository(SQLAlchemyAsyncRepository[OrderIdempotencyKey]):
    model_type = OrderIdempotencyKey
