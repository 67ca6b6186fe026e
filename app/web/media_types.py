"""A body is read in the media type its route handler declares, and no other: anything else is a 415 that
names the expected type, rather than a parse error or a "missing field" about a body read the wrong way."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.params import BodyKwarg

from app.web.errors import problem

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler


async def require_declared_media_type(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard of every route: a body whose ``Content-Type`` isn't the one the handler reads is refused.

    An empty body passes whatever its type (it is no body: the handler says what it makes of none), and a
    body past the size limit is a 413 first, whatever its type. A body without a ``Content-Type`` is refused
    too: guessing its type is what answers JSON sent to a form with "the username is missing".
    """
    if (expected := declared_media_type(handler)) is None or not isinstance(connection, Request):
        return
    sent = connection.content_type[0]  # lower case, without parameters such as charset
    if _is_a(sent, expected) or not await connection.body():
        return
    raise problem(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        f"The body must be {expected}; got {sent or 'no Content-Type'}",
    )


def declared_media_type(handler: BaseRouteHandler) -> str | None:
    """The media type of the handler's body (``data``), if it takes one: JSON unless it says otherwise."""
    if (data := handler.parsed_fn_signature.parameters.get("data")) is None:
        return None
    if isinstance(body := data.kwarg_definition, BodyKwarg):
        return str(
            body.media_type.value if isinstance(body.media_type, RequestEncodingType) else body.media_type
        )
    return RequestEncodingType.JSON.value


def _is_a(sent: str, expected: str) -> bool:
    if expected == RequestEncodingType.JSON:  # and any JSON-based type, such as application/merge-patch+json
        return sent == expected or (sent.startswith("application/") and sent.endswith("+json"))
    return sent == expected
