"""The orders API. Every operation needs a Bearer token; users reach their own orders, admins everyone's."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, patch, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from app.accounts.auth import BEARER_REQUIRED, Principal
from app.lib.errors import ForbiddenError, problem_responses
from app.lib.openapi import RateLimitedOperation
from app.lib.rate_limit import read_ahead_values
from app.lib.security import SessionToken
from app.orders.schemas import OrderCreateBody, OrderRead, OrderStatusUpdate, StatusChangeBody
from app.orders.services import OrderReader, OrderService

AuthRequest = Request[Principal, SessionToken, Any]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Makes retries safe: the same key from the same user within the deployment's key "
        "lifetime (24 h by default) returns its order.",
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=100, description="Page size (at most 100).")]
MAX_OFFSET = 2**31 - 1  # no one pages past two billion orders; the databases fail past 2**63
Offset = Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET, description="Orders to skip.")]

READS_CACHED_ORDER = "reads_cached_order"
"""Handler ``opt`` key: the handler reads the cache entry of the ``order_id`` in its path (read it ahead)."""
REPLAYED_HEADER = "Idempotent-Replayed"
TOTAL_COUNT_HEADER = "X-Total-Count"
# Documentation only: a ``value`` gives a header its schema (OpenAPI requires one).
PAGE_HEADERS = [
    ResponseHeader(
        name=TOTAL_COUNT_HEADER,
        value="51",
        description="Orders in all pages.",
        required=True,
        documentation_only=True,
    )
]


class OrderController(Controller):
    path = "/orders"
    tags = ["orders"]
    security = BEARER_REQUIRED

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Place an order",
        description="The server computes `total_price`; a `total_price` sent along must match it.",
        response_headers=[
            ResponseHeader(
                name="Location",
                value="/orders/01a2338a-d470-70ec-a34d-3a021d0919e4",
                description="The order's URL.",
                required=True,
                documentation_only=True,
            ),
            ResponseHeader(
                name=REPLAYED_HEADER,
                value="true",
                description="`true` when the Idempotency-Key was seen before and this is its first order.",
                documentation_only=True,
            ),
        ],
        responses=problem_responses(400, 401, 413, 422, 429),
        operation_class=RateLimitedOperation,
    )
    async def place(
        self,
        request: AuthRequest,
        data: OrderCreateBody,
        orders: NamedDependency[OrderService],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[OrderRead]:
        order, replayed = await orders.place(request.user.user_id, data, idempotency_key)
        headers = {"Location": f"/orders/{order.id}"}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return Response(order, status_code=HTTP_201_CREATED, headers=headers)

    @get(
        "/",
        summary="The caller's orders, newest first",
        response_headers=PAGE_HEADERS,
        responses=problem_responses(401, 422, 429),
        operation_class=RateLimitedOperation,
    )
    async def list_own(
        self,
        request: AuthRequest,
        order_reader: NamedDependency[OrderReader],
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Response[list[OrderRead]]:
        return await _page(order_reader, request.user.user_id, limit, offset)

    @get(
        "/user/{user_id:str}",
        summary="A user's orders, newest first",
        description="Users may list their own orders only (403 otherwise); admins anyone's.",
        response_headers=PAGE_HEADERS,
        responses=problem_responses(401, 403, 422, 429),
        operation_class=RateLimitedOperation,
    )
    async def list_for_user(
        self,
        request: AuthRequest,
        user_id: FromPath[UUID],
        order_reader: NamedDependency[OrderReader],
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Response[list[OrderRead]]:
        if not request.user.may_access(user_id):
            raise ForbiddenError("You may list your own orders only")
        return await _page(order_reader, user_id, limit, offset)

    @get(
        "/{order_id:str}",
        opt={READS_CACHED_ORDER: True},
        summary="An order",
        description="Another user's order answers 404, like an unknown one.",
        responses=problem_responses(401, 404, 422, 429),
        operation_class=RateLimitedOperation,
    )
    async def read(
        self,
        request: AuthRequest,
        order_id: FromPath[UUID],
        order_reader: NamedDependency[OrderReader],
    ) -> OrderRead:
        return await order_reader.read(request.user, order_id, read_ahead_values(request.scope))

    @patch(
        "/{order_id:str}",
        summary="Move an order to another status",
        description=(
            "PENDING → PAID → SHIPPED; PENDING or PAID → CANCELED. Other moves answer 409. "
            "An empty body changes nothing and answers the order."
        ),
        responses=problem_responses(400, 401, 404, 409, 413, 422, 429),
        operation_class=RateLimitedOperation,
        dto=OrderStatusUpdate,
        return_dto=None,
    )
    async def change_status(
        self,
        request: AuthRequest,
        order_id: FromPath[UUID],
        data: StatusChangeBody,
        orders: NamedDependency[OrderService],
        order_reader: NamedDependency[OrderReader],
    ) -> OrderRead:
        changes = data.as_builtins()
        if "status" not in changes:
            return await order_reader.read(request.user, order_id)
        return await orders.change_status(request.user, order_id, changes["status"])


async def _page(reader: OrderReader, user_id: UUID, limit: int, offset: int) -> Response[list[OrderRead]]:
    page, total = await reader.page(user_id, limit, offset)
    return Response(page, headers={TOTAL_COUNT_HEADER: str(total)})
