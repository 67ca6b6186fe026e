"""The SQLAlchemy configuration shared by every process role."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import structlog
from advanced_alchemy.extensions.litestar import AsyncSessionConfig, EngineConfig, SQLAlchemyAsyncConfig
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

T = TypeVar("T")
log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_SECONDS = 5
"""How long opening a PostgreSQL connection may take (asyncpg waits 60 s): a database that doesn't answer is
a 503 within seconds, not a request hanging for a minute."""

COMMAND_TIMEOUT_SECONDS = 5
"""How long a statement may wait for its answer (asyncpg waits for ever): a database that stopped answering on
a connection already open (a host cut off, or powered off without closing its connections) is a 503 within
seconds, not a request hanging until TCP gives up. Every statement of the service takes milliseconds."""

UNAVAILABLE_ERRORS = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,  # every pooled connection stayed busy for the pool's timeout
    OSError,
    TimeoutError,
    # SQLAlchemy 2.0 wraps asyncpg's errors of statements, not those raised while connecting, nor those of
    # the page query, which goes to asyncpg directly: these come as asyncpg raised them.
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was closed
    asyncpg.exceptions.OperatorInterventionError,  # class 57: starting up, shutting down, terminated
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, out of memory or disk
)
"""Errors that mean the database (or the network to it) is away for now, not that the request or the code is
wrong: an API request answers 503, a task is retried."""

_DEAD_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    # A connection whose protocol was left mid-operation by the server's goodbye: it can't be used again.
    asyncpg.InternalClientError,
)

STORABLE_TEXT = r"^[^\x00]*$"
"""The ``pattern`` of text that reaches the database: PostgreSQL's text and jsonb can't hold a NUL character,
so input is refused with a 422 before a query fails on it."""


def sqlalchemy_config(database_url: str, pool_size: int = 5) -> SQLAlchemyAsyncConfig:
    """``pool_size`` connections per process; SQLite keeps its own pool.

    A fixed pool: under load, requests wait their turn for a connection. Connections beyond it would be
    opened and closed again within the burst, and that churn (a new PostgreSQL backend, a TLS negotiation
    attempt and fresh prepared statements each time) cost more than the waiting. No request holds two
    connections at once (see ``autocommit_session``), so waiting never deadlocks.
    """
    pooled = not database_url.startswith("sqlite")
    return SQLAlchemyAsyncConfig(
        connection_string=database_url,
        engine_config=EngineConfig(
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"timeout": CONNECT_TIMEOUT_SECONDS, "command_timeout": COMMAND_TIMEOUT_SECONDS},
        )
        if pooled
        else EngineConfig(),
        create_engine_callable=_engine_replacing_closed_connections,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        # Commits a request's session when a 2xx response starts. Writes commit explicitly before that
        # (auto_commit=True), so a failed commit is an error response, never a 2xx for lost data.
        before_send_handler="autocommit",
        set_default_exception_handler=False,  # app.web.errors answers for repository errors too
        enable_file_object_listener=False,  # no FileObject columns here; it would run on every commit
    )


def autocommit_engine(config: SQLAlchemyAsyncConfig) -> AsyncEngine:
    """The process's engine in autocommit mode, for work that is a single statement: no BEGIN and COMMIT
    round trips, and the statement is atomic (and sees one snapshot) on its own. Shares the engine's pool."""
    return _autocommit(config.get_engine())


def autocommit_session(config: SQLAlchemyAsyncConfig) -> AsyncSession:
    """A session on the autocommit engine, outside a request's own session: each statement, read or write,
    commits as it runs, so a write made through it is one statement (atomic on its own).

    Use it as ``async with``, which gives its connection back at once: a request's own session keeps its
    connection until the response is sent, so a read made through it before the handler (authentication)
    would hold one connection while the handler waits for another.
    """
    return AsyncSession(autocommit_engine(config), expire_on_commit=False)


@functools.lru_cache(maxsize=4)  # one engine per process (tests make more)
def _autocommit(engine: AsyncEngine) -> AsyncEngine:
    # Derived once: deriving costs about as much as the round trips it saves.
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, says the database is away for now."""
    return any(isinstance(error, UNAVAILABLE_ERRORS) or _invalidated(error) for error in _causes(exc))


def violates_constraint(exc: BaseException) -> bool:
    """Whether a repository error is the database refusing a row (a unique or foreign key, a check).
    advanced-alchemy reports every failed statement as an ``IntegrityError``, a dropped connection's too."""
    return isinstance(exc.__cause__, IntegrityError)


def connection_lost(exc: BaseException) -> bool:
    """Whether the statement failed because its connection died under it (a restart, a terminated backend)."""
    return any(isinstance(error, _DEAD_CONNECTION_ERRORS) or _invalidated(error) for error in _causes(exc))


async def read_retrying(read: Callable[[], Awaitable[T]]) -> T:
    """Run a read, and once more if its connection died under it: the second try gets a fresh connection,
    and a read changes nothing, so running it twice is safe. A write is never retried this way: it may have
    been applied before the connection died."""
    try:
        return await read()
    except Exception as exc:
        if not connection_lost(exc):
            raise
        log.info("database connection lost during a read; reading again", error=type(exc).__name__)
        return await read()


def _invalidated(error: BaseException) -> bool:
    """SQLAlchemy's mark of an error that ended its connection (it then raises a plain ``DBAPIError``)."""
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from: repository errors wrap SQLAlchemy's, which wrap the driver's."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _engine_replacing_closed_connections(url: str, **options: Any) -> AsyncEngine:
    """The engine, whose pool never hands out a connection that the server already closed."""
    engine = create_async_engine(url, **options)
    if engine.dialect.name == "postgresql":
        event.listen(engine.sync_engine.pool, "checkout", _refuse_closed_connection)
        event.listen(engine.sync_engine, "handle_error", _recognise_dead_connection)
    return engine


def _recognise_dead_connection(context: ExceptionContext) -> None:
    """Tell SQLAlchemy that a connection the server ended is dead, so that the pool drops it (and renews the
    others of its generation). It asks asyncpg whether the connection is closed, but PostgreSQL's
    "terminating connection" error arrives before the socket closes, so it would be told no, and the broken
    connection would go back into the pool for the next request to fail on."""
    if connection_lost(context.original_exception):
        context.is_disconnect = True


def _refuse_closed_connection(
    dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """A pooled connection that PostgreSQL ended (a restart, a terminated backend) is replaced by a new one
    before the request uses it, rather than failing the request. asyncpg notices the server's goodbye on
    its own, so the check reads a flag: no round trip, unlike SQLAlchemy's ``pool_pre_ping``."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")
