"""The orders API. Every operation needs a Bearer token; users reach their own orders, admins everyone's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple
from urllib.parse import unquote_plus
from uuid import UUID

from advanced_alchemy.filters import BeforeAfter, CollectionFilter, StatementFilter
from litestar import Controller, Request, Response, get, patch, post
from litestar.connection import ASGIConnection
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from app.accounts.auth import BEARER_REQUIRED, Principal
from app.accounts.security import SessionToken
from app.docs.openapi import RateLimitedOperation
from app.orders.models import OrderStatus
from app.orders.repositories import Page
from app.orders.schemas import (
    CURSOR_LENGTH,
    CURSOR_PATTERN,
    OrderCreateBody,
    OrderRead,
    OrderStatusUpdate,
    Position,
    StatusChangeBody,
    decode_cursor,
    encode_cursor,
)
from app.orders.services import OrderReader, OrderService
from app.web.errors import ForbiddenError, problem_responses
from app.web.rate_limit import read_ahead_values

AuthRequest = Request[Principal, SessionToken, Any]
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
LOCATION_HEADER = "Location"
REPLAYED_HEADER = "Idempotent-Replayed"
TOTAL_COUNT_HEADER = "X-Total-Count"
NEXT_CURSOR_HEADER = "X-Next-Cursor"
LINK_HEADER = "Link"
RESPONSE_HEADERS = (LOCATION_HEADER, REPLAYED_HEADER, TOTAL_COUNT_HEADER, NEXT_CURSOR_HEADER, LINK_HEADER)
"""The headers these handlers set, which a browser's script may read only if CORS exposes them."""
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_KEY_HEADER,
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
Cursor = Annotated[
    str | None,
    QueryParameter(
        min_length=CURSOR_LENGTH,
        max_length=CURSOR_LENGTH,
        pattern=CURSOR_PATTERN,
        description="Where the page starts: the cursor of the previous page (its `X-Next-Cursor`, also in "
        "its `Link` header), in place of `offset`. Each page is then one index range scan, however deep, and "
        "orders created meanwhile neither repeat nor go missing. Not with `offset` (422).",
    ),
]
Statuses = Annotated[
    list[OrderStatus] | None,
    QueryParameter(
        max_items=len(OrderStatus),
        description="Only orders in one of these statuses; repeat it for several: "
        "`?status=PAID&status=SHIPPED`.",
    ),
]
_INSTANT = "An ISO 8601 date and time with its timezone, like `2026-12-01T00:00:00Z` (send `+` as `%2B`)."
CreatedAfter = Annotated[
    datetime | None, QueryParameter(description=f"Only orders created after this instant. {_INSTANT}")
]
CreatedBefore = Annotated[
    datetime | None, QueryParameter(description=f"Only orders created before this instant. {_INSTANT}")
]
# Documentation only: a ``value`` gives a header its schema (OpenAPI requires one).
TOTAL_COUNT = ResponseHeader(
    name=TOTAL_COUNT_HEADER,
    value="51",
    description="Orders in all pages (the filters applied); on pages asked for without `cursor`.",
    documentation_only=True,
)
NEXT_PAGE_HEADERS = [
    ResponseHeader(
        name=LINK_HEADER,
        value=f'</orders?limit=20&cursor={"A" * CURSOR_LENGTH}>; rel="next"',
        description="The next page (RFC 8288), the same query with `cursor` in place of `offset`; absent on "
        "the last page.",
        documentation_only=True,
    ),
    ResponseHeader(
        name=NEXT_CURSOR_HEADER,
        value="A" * CURSOR_LENGTH,
        description="The `cursor` of the next page; absent on the last page.",
        documentation_only=True,
    ),
]
PAGE_HEADERS = [TOTAL_COUNT, *NEXT_PAGE_HEADERS]


class OrderPages(NamedTuple):
    """The reader of pages, and the page a request asks for: its filters, its size and where it starts."""

    reader: OrderReader
    filters: list[StatementFilter]
    limit: int
    offset: int
    after: Position | None


def provide_order_pages(
    request: AuthRequest,
    order_reader: NamedDependency[OrderReader],
    *,
    status: Statuses = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    limit: Limit = 50,
    offset: Offset = 0,
    cursor: Cursor = None,
) -> OrderPages:
    """The filters of every list of orders, as advanced-alchemy's filter types, with the reader they go to.

    The reader comes through here rather than beside it in the handler: Litestar resolves the dependencies of
    one level together in a task group, a measurable share of a page's CPU (bench/RESULTS.md, Hand-written
    parts); one after the other, there is none. And not advanced-alchemy's ``create_filter_dependencies``: its
    parameters are named otherwise (``status_in``; ``currentPage`` and ``pageSize`` in place of ``limit`` and
    ``offset``), carry no description, and take datetimes without a timezone, which the database's column
    refuses with a 500. This service's names and 422s stay as documented.
    """
    filters: list[StatementFilter] = []
    if status:
        filters.append(CollectionFilter("status", sorted(set(status))))  # one statement shape per set
    if created_after is not None or created_before is not None:
        after, before = _instant(created_after, "created_after"), _instant(created_before, "created_before")
        filters.append(BeforeAfter("created_at", before, after))
    return OrderPages(order_reader, filters, limit, offset, _after(request, cursor))


def _instant(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.utcoffset() is None:
        raise _invalid(name, "must have a timezone, like 2026-12-01T00:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first instant a datetime holds
        raise _invalid(name, "is out of range") from None


def _invalid(name: str, message: str) -> ValidationException:
    """A 422 naming the query parameter, as Litestar reports its own checks (see app/web/errors.py)."""
    return ValidationException(
        f"{name}: {message}", extra=[{"key": name, "source": "query", "message": message}]
    )


def admins_only(connection: ASGIConnection[Any, Principal, Any, Any], _: BaseRouteHandler) -> None:
    if not connection.user.is_admin:
        raise ForbiddenError("Only admins may list every user's orders")


PAGES = {"pages": Provide(provide_order_pages, sync_to_thread=False)}


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
                name=LOCATION_HEADER,
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
        operation_id="createOrder",
    )
    async def place(
        self,
        request: AuthRequest,
        data: OrderCreateBody,
        orders: NamedDependency[OrderService],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[OrderRead]:
        order, replayed = await orders.place(request.user.user_id, data, idempotency_key)
        headers = {LOCATION_HEADER: f"/orders/{order.id}"}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return Response(order, status_code=HTTP_201_CREATED, headers=headers)

    @get(
        "/",
        summary="The caller's orders, newest first",
        response_headers=PAGE_HEADERS,
        responses=problem_responses(401, 422, 429),
        operation_class=RateLimitedOperation,
        dependencies=PAGES,
        operation_id="listOrders",
    )
    async def list_own(
        self,
        request: AuthRequest,
        *,
        pages: NamedDependency[OrderPages],
    ) -> Response[list[OrderRead]]:
        return await _page(request, pages, request.user.user_id)

    @get(
        "/user/{user_id:str}",
        summary="A user's orders, newest first",
        description="Users may list their own orders only (403 otherwise); admins anyone's.",
        response_headers=PAGE_HEADERS,
        responses=problem_responses(401, 403, 422, 429),
        operation_class=RateLimitedOperation,
        dependencies=PAGES,
        operation_id="listUserOrders",
    )
    async def list_for_user(
        self,
        request: AuthRequest,
        user_id: FromPath[UUID],
        *,
        pages: NamedDependency[OrderPages],
    ) -> Response[list[OrderRead]]:
        if not request.user.may_access(user_id):
            raise ForbiddenError("You may list your own orders only")
        return await _page(request, pages, user_id)

    # Before "/{order_id:str}" in the source for the reader; Litestar matches a literal segment first anyway.
    @get(
        "/all",
        summary="Every user's orders, newest first (admins only)",
        description="403 for anyone but an admin. No `X-Total-Count`: counting every order would read them "
        "all on each page; follow `Link` (or `X-Next-Cursor`) to the end instead.",
        guards=[admins_only],
        response_headers=NEXT_PAGE_HEADERS,
        responses=problem_responses(401, 403, 422, 429),
        operation_class=RateLimitedOperation,
        dependencies=PAGES,
        operation_id="listAllOrders",
    )
    async def list_all(
        self,
        request: AuthRequest,
        *,
        pages: NamedDependency[OrderPages],
        user_id: Annotated[UUID | None, QueryParameter(description="Only this user's orders.")] = None,
    ) -> Response[list[OrderRead]]:
        return await _page(request, pages, user_id, count=False)

    @get(
        "/{order_id:str}",
        opt={READS_CACHED_ORDER: True},
        summary="An order",
        description="Another user's order answers 404, like an unknown one.",
        responses=problem_responses(401, 404, 422, 429),
        operation_class=RateLimitedOperation,
        operation_id="getOrder",
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
        operation_id="updateOrderStatus",
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


async def _page(
    request: AuthRequest, pages: OrderPages, owner: UUID | None, *, count: bool = True
) -> Response[list[OrderRead]]:
    """A page of the owner's orders (everyone's for None), counted on pages without a cursor if ``count``,
    with the next page's cursor and link if there is one."""
    limit, offset, after = pages.limit, pages.offset, pages.after
    page = await pages.reader.page(owner, pages.filters, limit, offset, after, count=count and after is None)
    return Response(page.orders, headers=_page_headers(request, page))


def _after(request: AuthRequest, cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    if "offset" in request.query_params:
        raise _invalid("cursor", "can't be combined with offset: a cursor says where the page starts")
    try:
        return decode_cursor(cursor)
    except ValueError as exc:
        raise _invalid("cursor", str(exc)) from None


def _page_headers(request: AuthRequest, page: Page) -> dict[str, str]:
    headers = {} if page.total is None else {TOTAL_COUNT_HEADER: str(page.total)}
    if page.more and page.orders:
        last = page.orders[-1]
        cursor = encode_cursor(Position(last.created_at, last.id))
        headers[NEXT_CURSOR_HEADER] = cursor
        headers[LINK_HEADER] = f'<{request.scope["path"]}?{_next_query(request, cursor)}>; rel="next"'
    return headers


def _next_query(request: AuthRequest, cursor: str) -> str:
    """This request's query string with ``cursor`` in place of ``offset`` and of a previous cursor: its
    other parameters as the client wrote them (quoting them again cost more than the rest of the header).
    The link is relative to the request's URL (RFC 8288 allows a reference): no proxy's host to trust."""
    query = request.scope["query_string"].decode("latin-1")
    kept = [
        part for part in query.split("&") if part and unquote_plus(part.partition("=")[0]) not in _POSITIONING
    ]
    return "&".join([*kept, f"cursor={cursor}"])


_POSITIONING = ("offset", "cursor")
