"""The ``new_order`` event: announced through the outbox when an order is placed."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec
from uuid_utils.compat import uuid7

from app.messaging.broker import Event
from app.observability.tracing import current_traceparent
from app.orders.schemas import OrderRead

NEW_ORDER: Literal["new_order"] = "new_order"


class NewOrder(msgspec.Struct, frozen=True):
    """The message body. Unknown fields are ignored, so producers can add some before consumers know them."""

    event: Literal["new_order"]
    event_id: UUID
    order_id: UUID
    user_id: UUID
    total_price: Decimal
    occurred_at: datetime


_decoder = msgspec.json.Decoder(NewOrder)


def decode_new_order(body: bytes) -> NewOrder:
    """The event in ``body``; ``msgspec.ValidationError`` or ``msgspec.DecodeError`` if it is not one."""
    return _decoder.decode(body)


def new_order_message(order: OrderRead, request_id: str | None) -> Event:
    """The outbox row announcing ``order``, to be written in the transaction that creates it; with the trace
    of the request, which its publication continues, whichever process publishes it."""
    event_id = uuid7()  # time-ordered, like every id here
    event = NewOrder(
        event=NEW_ORDER,
        event_id=event_id,
        order_id=order.id,
        user_id=order.user_id,
        total_price=order.total_price,
        occurred_at=order.created_at,
    )
    return Event(
        id=event_id,
        topic=NEW_ORDER,
        payload=msgspec.json.encode(event),
        request_id=request_id,
        created_at=datetime.now(UTC),
        trace_context=current_traceparent(),
    )
