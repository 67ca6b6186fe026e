"""What the orders API reads and writes. Money is a Decimal, and a string with two decimals in JSON."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, NamedTuple
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyDTOConfig
from litestar.dto import DTOData
from litestar.openapi.spec import Example
from litestar.params import Body

from app.orders.models import Order, OrderStatus
from app.storage.db import STORABLE_TEXT
from app.web.dto import BodyDTO

CENT = Decimal("0.01")
MAX_PRICE = Decimal("1000000.00")
MAX_QUANTITY = 10_000

Money = Annotated[
    Decimal,
    msgspec.Meta(
        description="An amount of money: a string with at most two decimals (numbers are accepted on input).",
        examples=["19.99"],
        extra_json_schema={"extra": {"pattern": r"^\d+(\.\d{1,2})?$"}},
    ),
]


def money(value: Decimal, field: str) -> Decimal:
    """``value`` with exactly two decimals, or a ValueError naming ``field`` (msgspec turns it into a 422)."""
    if not value.is_finite() or value <= 0:
        raise ValueError(f"`{field}` must be a number greater than 0")
    if value > MAX_PRICE * MAX_QUANTITY * 100:
        raise ValueError(f"`{field}` is too large")
    if value != value.quantize(CENT):
        raise ValueError(f"`{field}` must have at most 2 decimal places")
    return value.quantize(CENT)


class OrderItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An item of an order: frozen, as the order that holds it (``OrderRead``)."""

    name: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=200, pattern=STORABLE_TEXT, examples=["Espresso beans, 1 kg"]),
    ]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
    price: Money

    def __post_init__(self) -> None:
        price = money(self.price, "price")
        if price > MAX_PRICE:
            raise ValueError(f"`price` must be at most {MAX_PRICE}")
        msgspec.structs.force_setattr(self, "price", price)  # msgspec's way to normalize a frozen field


class OrderCreate(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[OrderItem], msgspec.Meta(min_length=1, max_length=100)]
    total_price: Annotated[
        Money | None, msgspec.Meta(description="Optional; if sent, it must equal the total.")
    ] = None

    def __post_init__(self) -> None:
        if self.total_price is not None and money(self.total_price, "total_price") != self.total:
            raise ValueError(f"`total_price` {self.total_price} does not match the items' total {self.total}")

    @property
    def total(self) -> Decimal:
        return sum((item.price * item.quantity for item in self.items), Decimal("0.00"))

    def fingerprint(self) -> str:
        """Identifies the request's content, to tell a retry from a different order under the same key."""
        return hashlib.sha256(msgspec.json.encode(self.items)).hexdigest()


OrderCreateBody = Annotated[
    OrderCreate,
    # A whole body, so that "Try it out" sends one that succeeds: the fields' own examples don't add up.
    Body(
        examples=[
            Example(
                summary="Two bags of espresso beans",
                value={
                    "items": [{"name": "Espresso beans, 1 kg", "quantity": 2, "price": "12.50"}],
                    "total_price": "25.00",
                },
            )
        ]
    ),
]


class OrderStatusUpdate(BodyDTO[Order]):
    """What a client may change in an order (``PATCH``): the columns ``include`` names, each optional (an
    empty body changes nothing), and no other field."""

    config = SQLAlchemyDTOConfig(include={"status"}, partial=True, forbid_unknown_fields=True)
    __schema_name__ = "OrderStatusUpdate"


# A new order is PENDING, which can become PAID: the first status (PENDING itself) would be a 409.
StatusChangeBody = Annotated[
    DTOData[Order], Body(examples=[Example(summary="Pay for the order", value={"status": "PAID"})])
]


class OrderRead(msgspec.Struct, frozen=True):
    """An order as the API shows it, and the cache entry's schema.

    A Struct, not a DTO of ``Order``: the paths that answer with orders hold no ORM object to map (and S1, S2
    are the hottest). A cached read decodes the cache's bytes into it, a create builds it from the request's
    values before its one INSERT, a page and a status change from the rows their statements return. The
    two that read an ORM object, a cache miss and an idempotent replay, convert it, as the cache stores it.

    Frozen, its items a tuple: the cache hands one decoded order to all its readers, so none of them may
    change what the others see.
    """

    id: UUID
    user_id: UUID
    items: tuple[OrderItem, ...]
    total_price: Money
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None


class Position(NamedTuple):
    """Where a page of orders ends in their order, newest first: its last order's sort key."""

    created_at: datetime
    id: UUID


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CURSOR_VERSION = 1
_CURSOR = struct.Struct(">Bq16s")  # version, created_at in microseconds since the epoch, the order's id
CURSOR_LENGTH = len(base64.urlsafe_b64encode(bytes(_CURSOR.size)).rstrip(b"="))
CURSOR_PATTERN = rf"^[A-Za-z0-9_-]{{{CURSOR_LENGTH}}}$"


def encode_cursor(position: Position) -> str:
    """The opaque text a client sends back as ``cursor`` for the page after ``position``."""
    micros = (position.created_at - _EPOCH) // _MICROSECOND
    return (
        base64.urlsafe_b64encode(_CURSOR.pack(_CURSOR_VERSION, micros, position.id.bytes))
        .rstrip(b"=")
        .decode()
    )


def decode_cursor(text: str) -> Position:
    """The position a cursor of ``encode_cursor`` names; ValueError for any other text."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        version, micros, order_id = _CURSOR.unpack(raw)
        position = Position(_EPOCH + micros * _MICROSECOND, UUID(bytes=order_id))
    except (binascii.Error, struct.error, OverflowError) as exc:
        raise ValueError("is not a cursor this service gave out") from exc
    # One spelling per position (the base64's unused bits too): anything else was not given out.
    if version != _CURSOR_VERSION or encode_cursor(position) != text:
        raise ValueError("is not a cursor this service gave out")
    return position
