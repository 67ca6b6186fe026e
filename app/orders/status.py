"""The order status machine.

PENDING → PAID → SHIPPED; PENDING or PAID → CANCELED; SHIPPED and CANCELED are final.
"""

from __future__ import annotations

from app.orders.models import OrderStatus
from app.web.errors import ConflictError

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.PAID, OrderStatus.CANCELED}),
    OrderStatus.PAID: frozenset({OrderStatus.SHIPPED, OrderStatus.CANCELED}),
    OrderStatus.SHIPPED: frozenset(),
    OrderStatus.CANCELED: frozenset(),
}


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    """Raise a 409 naming the current status unless the machine allows ``current`` → ``target``."""
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none, it is final"
        raise ConflictError(f"The order is {current}: it can't become {target} (allowed: {allowed})")


def sources_of(target: OrderStatus) -> list[OrderStatus]:
    """The statuses from which the machine allows a move to ``target``."""
    return [status for status, targets in TRANSITIONS.items() if target in targets]
