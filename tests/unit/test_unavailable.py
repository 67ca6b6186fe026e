"""Which errors mean "the database is away for now" (503, a retried task) and which are bugs or conflicts.

The errors are the real classes asyncpg, SQLAlchemy and advanced-alchemy raise, chained as they chain them.
"""

from __future__ import annotations

from http import HTTPStatus

import asyncpg
import pytest
from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from advanced_alchemy.exceptions import RepositoryError, wrap_sqlalchemy_exception
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from app.storage.db import connection_lost, database_unavailable
from app.web.errors import RETRY_AFTER_SECONDS, problem_for


def raised_from(error: Exception, cause: BaseException) -> Exception:
    try:
        raise error from cause
    except Exception as chained:
        return chained


def wrapped_by_the_repository(error: Exception) -> RepositoryError:
    """``error`` as an advanced-alchemy repository method raises it."""
    try:
        with wrap_sqlalchemy_exception():
            raise error
    except RepositoryError as wrapped:
        return wrapped
    raise AssertionError("not wrapped")


def dropped_connection() -> DBAPIError:
    driver_error = asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    )
    return DBAPIError("SELECT 1", {}, driver_error, connection_invalidated=True)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
        dropped_connection(),
        wrapped_by_the_repository(dropped_connection()),
    ],
    ids=type,
)
def test_an_outage_is_unavailable(error: BaseException) -> None:
    assert database_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        ProgrammingError("SELECT nope", {}, Exception("relation does not exist")),
        wrapped_by_the_repository(IntegrityError("INSERT", {}, Exception("duplicate key value"))),
    ],
    ids=type,
)
def test_a_bug_or_a_conflict_is_not(error: BaseException) -> None:
    assert not database_unavailable(error)


def test_only_a_connection_that_died_under_a_statement_is_lost() -> None:
    assert connection_lost(wrapped_by_the_repository(dropped_connection()))
    assert connection_lost(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert connection_lost(asyncpg.InternalClientError("cannot switch to state 12"))  # left mid-operation
    assert not connection_lost(
        ConnectionRefusedError(111, "Connect call failed")
    )  # never connected: no retry
    assert not connection_lost(asyncpg.exceptions.CannotConnectNowError("starting up"))


def answer(error: Exception) -> tuple[int, dict[str, str]]:
    problem = problem_for(error)
    return problem.status_code, dict(problem.headers or {})


def test_an_outage_is_a_503_with_retry_after_and_a_duplicate_a_409() -> None:
    assert answer(wrapped_by_the_repository(dropped_connection())) == (
        HTTPStatus.SERVICE_UNAVAILABLE,
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
    assert answer(asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"))[0] == 503
    assert (
        answer(raised_from(RedisConnectionError("refused"), ConnectionRefusedError(111, "refused")))[0] == 503
    )
    duplicate = wrapped_by_the_repository(IntegrityError("INSERT", {}, Exception("duplicate key value")))
    assert isinstance(duplicate, RepositoryIntegrityError)
    assert answer(duplicate)[0] == HTTPStatus.CONFLICT
    assert answer(ValueError("a bug"))[0] == HTTPStatus.INTERNAL_SERVER_ERROR
