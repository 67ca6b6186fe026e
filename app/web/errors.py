"""Domain exceptions, and the one place where every error becomes an RFC 9457 problem details response."""

from __future__ import annotations

import re
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
import structlog
from advanced_alchemy import exceptions as repository_errors
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import ParameterKwarg
from litestar.plugins.problem_details import ProblemDetailsException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.storage.db import STORABLE_TEXT, database_unavailable, violates_constraint

if TYPE_CHECKING:
    from litestar import Request, Response
    from litestar.types import ExceptionHandlersMap

log = structlog.get_logger(__name__)

# msgspec names a missing or unknown field in its message; our own checks start theirs with the field.
_FIELD_IN_MESSAGE = re.compile(r"(?:(?:missing required|unknown) field |^)`(?P<field>[^`]+)`")
PROBLEM_MEDIA_TYPE = "application/problem+json"
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
RETRY_AFTER_SECONDS = 5
"""What a 503 asks a client to wait: PostgreSQL restarts in a few seconds, and sooner retries from every
client would land on a database still starting up."""
OAUTH2_ERRORS = "oauth2_errors"
"""Handler ``opt`` key: an OAuth2 token endpoint, whose errors also carry RFC 6749 §5.2's ``error`` and
``error_description`` (Swagger UI's Authorize dialog shows those two, not ``detail``)."""
OAuth2ErrorCode = Literal[
    "invalid_request", "invalid_grant", "unsupported_grant_type", "temporarily_unavailable", "server_error"
]
_PATTERN_MEANINGS: dict[str, str] = {
    f"Expected `str` matching regex {STORABLE_TEXT!r}": "must not contain a NUL character",
}
"""What a 422 says instead of msgspec's message for a ``pattern`` (the regex, escaped twice over)."""


class ServiceError(Exception):
    """An error the client can act on; subclasses fix the status."""

    status_code: ClassVar[int] = HTTPStatus.INTERNAL_SERVER_ERROR
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(ServiceError):
    status_code = HTTPStatus.NOT_FOUND


class ConflictError(ServiceError):
    status_code = HTTPStatus.CONFLICT


class ForbiddenError(ServiceError):
    status_code = HTTPStatus.FORBIDDEN


class UnprocessableError(ServiceError):
    status_code = HTTPStatus.UNPROCESSABLE_ENTITY


class UnauthorizedError(ServiceError):
    status_code = HTTPStatus.UNAUTHORIZED
    headers = BEARER_CHALLENGE


class FieldError(msgspec.Struct):
    field: str
    message: str


class ProblemDetails(msgspec.Struct):
    """The body of every error response (RFC 9457), served as ``application/problem+json``."""

    status: int
    title: str
    detail: str
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET


class OAuth2ProblemDetails(ProblemDetails, kw_only=True):
    """The body of an error of an OAuth2 token endpoint: a problem document with RFC 6749 §5.2's fields."""

    error: Annotated[OAuth2ErrorCode, msgspec.Meta(description="The error code of RFC 6749 §5.2.")]
    error_description: Annotated[str, msgspec.Meta(description="The same text as `detail`.")]


def plain_pattern(pattern: str, meaning: str) -> str:
    """``pattern``, registered with what a 422 says of a value that doesn't match it (e.g. "must be an email
    address")."""
    _PATTERN_MEANINGS[f"Expected `str` matching regex {pattern!r}"] = meaning
    return pattern


def problem_responses(*statuses: int, oauth2: bool = False) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the errors an operation can answer with (``oauth2``: those of a token endpoint).

    An operation that validates input (422) also answers 400 for a body that can't be parsed at all; listing
    it here replaces the entry Litestar adds by itself, which shows its own error shape, not this service's.
    One that takes a body (413) also answers 415 for a body of another media type.
    """
    if HTTPStatus.UNPROCESSABLE_ENTITY in statuses:
        statuses = (HTTPStatus.BAD_REQUEST, *statuses)
    if HTTPStatus.REQUEST_ENTITY_TOO_LARGE in statuses:
        statuses = (*statuses, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
    return {
        status: ResponseSpec(
            data_container=OAuth2ProblemDetails if oauth2 else ProblemDetails,
            description=HTTPStatus(status).phrase,
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=int(status),
        title=HTTPStatus(status).phrase,
        detail=detail,
        headers=headers,
        extra=extra or None,
    )


def _from_service_error(exc: ServiceError) -> ProblemDetailsException:
    return problem(exc.status_code, exc.detail, headers=exc.headers or None)


def _from_http_exception(exc: HTTPException) -> ProblemDetailsException:
    headers = exc.headers
    if isinstance(exc, NotAuthorizedException):
        headers = {**BEARER_CHALLENGE, **(headers or {})}
    return problem(exc.status_code, exc.detail, headers=headers)


def _from_validation_exception(
    exc: ValidationException, names: dict[str, str] | None = None
) -> ProblemDetailsException:
    """Litestar reports invalid input as 400; it is 422 here, with each failing field named. ``names``: the
    parameters' names in the request (``Idempotency-Key``) by their names in the handler."""
    errors = [
        {"field": _failing_field(error, names or {}), "message": _message(error)}
        for error in exc.extra or []
        if isinstance(error, dict)
    ]
    detail = "; ".join(f"{error['field']}: {error['message']}" for error in errors) or exc.detail
    return problem(HTTPStatus.UNPROCESSABLE_ENTITY, detail, errors=errors)


def _failing_field(error: dict[str, Any], names: dict[str, str]) -> str:
    """Litestar names the parameter or the object (``data`` for the body), the field is often only in the
    message. Report the field itself: ``password``, or ``items[0].price`` inside a nested object, ``body``
    for the body as a whole, and a parameter by the name the client sent it under."""
    key = error.get("key") or error.get("source") or "body"
    key = names.get(key, key)
    if match := _FIELD_IN_MESSAGE.search(str(error.get("message", ""))):
        return match["field"] if key == "data" else f"{key}.{match['field']}"
    return "body" if key == "data" else str(key)


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("message", "is invalid"))
    # What Litestar reports for an input that is absent altogether (an empty body): the KeyError it caught.
    if message == repr(error.get("key")):
        return "Expected a value, got none"
    return _PATTERN_MEANINGS.get(message, message)


def _parameter_names(handler: HTTPRouteHandler) -> dict[str, str]:
    """The handler's parameters whose name in the request differs from their name in its signature."""
    names = {}
    for name, parameter in handler.parsed_fn_signature.parameters.items():
        if isinstance(kwarg := parameter.kwarg_definition, ParameterKwarg):
            names[name] = kwarg.name or kwarg.header or kwarg.query or kwarg.cookie or name
    return names


def _too_large(limit: int | None) -> ProblemDetailsException:
    detail = "The body is too large"
    if limit is not None:
        detail = f"The body is larger than the limit of {limit} bytes ({limit / 2**20:.3g} MiB)"
    return problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, detail)


def _from_repository_error(exc: repository_errors.RepositoryError) -> ProblemDetailsException:
    if isinstance(exc, repository_errors.NotFoundError):
        return problem(HTTPStatus.NOT_FOUND, "No such resource")
    if violates_constraint(exc):
        return problem(HTTPStatus.CONFLICT, "The request conflicts with the current state of the resource")
    return _from_unexpected(exc)


def _from_recursion_error(exc: RecursionError) -> ProblemDetailsException:
    # msgspec gives up on JSON nested deeper than the interpreter's stack; any other recursion is a bug.
    if "while deserializing" in str(exc):
        return problem(HTTPStatus.BAD_REQUEST, "The body is nested too deeply to be read")
    return _from_unexpected(exc)


def _from_unexpected(exc: Exception) -> ProblemDetailsException:
    if (dependency := _unavailable_dependency(exc)) is not None:
        return _unavailable(exc, dependency)
    log.error("unhandled error", exc_info=exc)
    return problem(HTTPStatus.INTERNAL_SERVER_ERROR, "The server could not complete the request")


def _unavailable_dependency(exc: Exception) -> str | None:
    """The service that ``exc`` says is away for now (the database, Redis), if it says so."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):  # before its cause, often an OSError
        return "cache"
    if database_unavailable(exc):
        return "database"
    return None


def _unavailable(exc: Exception, dependency: str) -> ProblemDetailsException:
    """A dependency is away: nothing is wrong with the request or the code, so no traceback is logged, and
    the client is told to try again (with its Idempotency-Key, for a create)."""
    log.warning("dependency unavailable", dependency=dependency, error=_innermost(exc))
    return problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"The {dependency} is unavailable for the moment; retry in {RETRY_AFTER_SECONDS} seconds",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _innermost(exc: BaseException) -> str:
    """The root cause, as the log line's reason: the driver's error rather than its wrappers'."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


_CONVERTERS: dict[type[Exception], Callable[[Any], ProblemDetailsException]] = {
    ServiceError: _from_service_error,
    HTTPException: _from_http_exception,
    ValidationException: _from_validation_exception,
    repository_errors.RepositoryError: _from_repository_error,
    RecursionError: _from_recursion_error,
    Exception: _from_unexpected,
}


def exception_handlers() -> ExceptionHandlersMap:
    """The app's exception handlers: every error becomes a problem document, through ``problem_response``.

    One handler for all, rather than Litestar's problem details plugin, whose converters see the exception
    alone: the route that failed tells what its parameters are called, its body limit, and whether it is an
    OAuth2 token endpoint."""
    kinds: list[type[Exception]] = [ProblemDetailsException, *_CONVERTERS]
    return dict.fromkeys(kinds, problem_response)


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    route_handler = request.scope.get("route_handler")  # none when no route matched
    handler = route_handler if isinstance(route_handler, HTTPRouteHandler) else None
    problem_exc = problem_for(exc, handler)
    if handler is not None and handler.opt.get(OAUTH2_ERRORS):
        problem_exc.extra = {**_extra(problem_exc), **_oauth2_fields(problem_exc)}
    return problem_exc.to_response(request)


def problem_for(exc: Exception, handler: HTTPRouteHandler | None = None) -> ProblemDetailsException:
    """The problem ``exc`` is, raised in ``handler``'s route (None: no route matched)."""
    if isinstance(exc, ProblemDetailsException):
        return exc
    if isinstance(exc, ValidationException) and handler is not None:
        return _from_validation_exception(exc, _parameter_names(handler))
    if isinstance(exc, RequestEntityTooLarge) and handler is not None:
        return _too_large(handler.resolve_request_max_body_size())
    convert = next(_CONVERTERS[kind] for kind in type(exc).__mro__ if kind in _CONVERTERS)
    return convert(exc)


def _extra(exc: ProblemDetailsException) -> dict[str, Any]:
    return dict(exc.extra) if isinstance(exc.extra, dict) else {}


def _oauth2_fields(exc: ProblemDetailsException) -> dict[str, str]:
    """RFC 6749 §5.2's ``error`` for a problem of a token endpoint; its statuses stay this service's own."""
    fields = {error["field"] for error in _extra(exc).get("errors", [])}
    code: OAuth2ErrorCode = "invalid_request"
    if exc.status_code == HTTPStatus.UNAUTHORIZED:  # bad credentials, a bad or spent refresh token
        code = "invalid_grant"
    elif exc.status_code in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
        code = "temporarily_unavailable"
    elif exc.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR:
        code = "server_error"
    elif "grant_type" in fields:
        code = "unsupported_grant_type"
    return {"error": code, "error_description": exc.detail}
