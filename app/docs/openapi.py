"""What the OpenAPI document says about the responses of every operation, beyond what its handler returns.

Middleware adds headers to responses that no handler declares: the request id on every response, the rate
limit window on every response of a limited route, ``Retry-After`` on a 429. Litestar documents a handler's
``response_headers`` on its success response only, so these operation classes (``operation_class=`` of a
route handler) put them on each of its responses. They also drop Litestar's generic 400 where the service
can't answer one: invalid parameters are 422 here, and only a body that can't be parsed is a 400.

``StrictStructSchemaPlugin`` says in the document what ``forbid_unknown_fields`` means for a request body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.openapi.spec import OpenAPI, OpenAPIHeader, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.plugins import OpenAPISchemaPlugin

from app.observability.logging import REQUEST_ID_HEADER, REQUEST_ID_PATTERN

if TYPE_CHECKING:
    from litestar import Request
    from litestar.typing import FieldDefinition

_COUNT = Schema(type=OpenAPIType.INTEGER, minimum=0)

EVERY_RESPONSE = {
    REQUEST_ID_HEADER: OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING, pattern=REQUEST_ID_PATTERN),
        description="The request's id (the client's own, if it sent a sane one); the logs carry it.",
        required=True,
    )
}
RATE_LIMITED_RESPONSE = {
    "RateLimit-Policy": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING, pattern=r"^\d+;w=\d+$"),
        description="The limit and its window in seconds, e.g. `100;w=60`.",
        required=True,
    ),
    "RateLimit-Limit": OpenAPIHeader(
        schema=_COUNT, description="Requests allowed per window.", required=True
    ),
    "RateLimit-Remaining": OpenAPIHeader(
        schema=_COUNT, description="Requests left in the current window.", required=True
    ),
    "RateLimit-Reset": OpenAPIHeader(
        schema=_COUNT, description="Seconds until the current window ends.", required=True
    ),
}
TOO_MANY_REQUESTS = {
    "Retry-After": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
        description="Seconds to wait before the limit lets a request through again.",
        required=True,
    )
}


@dataclass
class ServiceOperation(Operation):
    """An operation of this service: its responses carry the request id."""

    def __post_init__(self) -> None:
        if self.request_body is None and self.responses:
            self.responses.pop("400", None)
        self.add_headers(EVERY_RESPONSE)

    def add_headers(self, headers: dict[str, OpenAPIHeader], status: str | None = None) -> None:
        for code, response in (self.responses or {}).items():
            if isinstance(response, OpenAPIResponse) and status in (None, code):
                response.headers = {**(response.headers or {}), **headers}


@dataclass
class RateLimitedOperation(ServiceOperation):
    """An operation behind the rate limiters: every response tells the window, a 429 when to come back."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.add_headers(RATE_LIMITED_RESPONSE)
        self.add_headers(TOO_MANY_REQUESTS, status="429")


class StrictStructSchemaPlugin(OpenAPISchemaPlugin):
    """A Struct that forbids unknown fields answers them with a 422: its schema allows no other properties.

    Litestar's own plugin makes every Struct's schema (a DTO's too), so the document says as much about each
    field as Litestar does; this one makes none. Asked, as every plugin is, whether it makes a field's schema,
    it notes the name of each strict Struct; ``complete_document`` then closes their schemas in the finished
    document, before it is first served.
    """

    def __init__(self) -> None:
        self._strict: set[str] = set()
        self._completed: OpenAPI | None = None

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        if (
            not field_definition.is_union
            and field_definition.is_subclass_of(msgspec.Struct)
            and field_definition.type_.__struct_config__.forbid_unknown_fields
        ):
            # The title Litestar gives a Struct's schema: a DTO's model is named by its __schema_name__.
            type_ = field_definition.type_
            self._strict.add(getattr(type_, "__schema_name__", None) or type_.__name__)
        return False

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: object) -> Schema:
        raise NotImplementedError("it makes no schema: see is_plugin_supported_field")

    def complete(self, document: OpenAPI) -> None:
        """Close the schemas of the strict Structs (once per document: it is built once, then cached)."""
        if document is self._completed:
            return
        # By title, which is the type's name whatever key the component got (a lenient Struct of the same
        # name as a strict one would be closed too: the service has none).
        for schema in (document.components.schemas or {}).values():
            if schema.title in self._strict:
                schema.additional_properties = False
        self._completed = document


async def complete_document(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of the routes that serve the document (``docs_router``): Litestar renders it on
    its first request from the document ``app.openapi_schema`` holds, which this completes first."""
    try:
        plugin = request.app.plugins.get(StrictStructSchemaPlugin)
    except KeyError:  # an app without it
        return
    plugin.complete(request.app.openapi_schema)
