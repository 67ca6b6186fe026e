"""Domain exceptions, and the one place where every error becomes an RFC 9457 problem details response."""

from __future__ import annotations

import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar

import msgspec
import structlog
from advanced_alchemy import exceptions as repository_errors
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.lib.db import database_unavailable, violates_constraint

log = structlog.get_logger(__name__)

# msgspec names a missing or unknown field in its message; our own checks start theirs with the field.
_FIELD_IN_MESSAGE = re.compile(r"(?:(?:missing required|unknown) field |^)`(?P<field>[^`]+)`")
PROBLEM_MEDIA_TYPE = "application/problem+json"
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
RETRY_AFTER_SECONDS = 5
"""What a 503 asks a client to wait: PostgreSQL restarts in a few seconds, and sooner retries from every
client would land on a database still starting up."""


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


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the errors an operation can answer with.

    An operation that validates input (422) also answers 400 for a body that can't be parsed at all; listing
    it here replaces the entry Litestar adds by itself, which shows its own error shape, not this service's.
    """
    if HTTPStatus.UNPROCESSABLE_ENTITY in statuses:
        statuses = (HTTPStatus.BAD_REQUEST, *statuses)
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
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


def _from_validation_exception(exc: ValidationException) -> ProblemDetailsException:
    """Litestar reports invalid input as 400; it is 422 here, with each failing field named."""
    errors = [
        {"field": _failing_field(error), "message": _message(error)}
        for error in exc.extra or []
        if isinstance(error, dict)
    ]
    detail = "; ".join(f"{error['field']}: {error['message']}" for error in errors) or exc.detail
    return problem(HTTPStatus.UNPROCESSABLE_ENTITY, detail, errors=errors)


def _failing_field(error: dict[str, Any]) -> str:
    """Litestar names the parameter or the object (``data`` for the body), the field is often only in the
    message. Report the field itself: ``password``, or ``items[0].price`` inside a nested object, and
    ``body`` for the body as a whole."""
    key = error.get("key") or error.get("source") or "body"
    if match := _FIELD_IN_MESSAGE.search(str(error.get("message", ""))):
        return match["field"] if key == "data" else f"{key}.{match['field']}"
    return "body" if key == "data" else str(key)


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("message", "is invalid"))
    # What Litestar reports for an input that is absent altogether (an empty body): the KeyError it caught.
    return "Expected a value, got none" if message == repr(error.get("key")) else message


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


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map=_CONVERTERS))
