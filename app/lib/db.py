"""The SQLAlchemy configuration shared by every process role."""

from __future__ import annotations

import functools

from advanced_alchemy.extensions.litestar import AsyncSessionConfig, EngineConfig, SQLAlchemyAsyncConfig
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

STORABLE_TEXT = r"^[^\x00]*$"
"""The ``pattern`` of text that reaches the database: PostgreSQL's text and jsonb can't hold a NUL character,
so input is refused with a 422 before a query fails on it."""


def sqlalchemy_config(database_url: str, pool_size: int = 5) -> SQLAlchemyAsyncConfig:
    """``pool_size`` connections per process; SQLite keeps its own pool.

    A fixed pool: under load, requests wait their turn for a connection. Connections beyond it would be
    opened and closed again within the burst, and that churn (a new PostgreSQL backend, a TLS negotiation
    attempt and fresh prepared statements each time) cost more than the waiting. No request holds two
    connections at once (see ``statement_session``), so waiting never deadlocks.
    """
    pooled = not database_url.startswith("sqlite")
    return SQLAlchemyAsyncConfig(
        connection_string=database_url,
        engine_config=EngineConfig(pool_size=pool_size, max_overflow=0) if pooled else EngineConfig(),
        session_config=AsyncSessionConfig(expire_on_commit=False),
        # Commits a request's session when a 2xx response starts. Writes commit explicitly before that
        # (auto_commit=True), so a failed commit is an error response, never a 2xx for lost data.
        before_send_handler="autocommit",
        set_default_exception_handler=False,  # app.lib.errors answers for repository errors too
        enable_file_object_listener=False,  # no FileObject columns here; it would run on every commit
    )


def autocommit_engine(config: SQLAlchemyAsyncConfig) -> AsyncEngine:
    """The process's engine in autocommit mode, for work that is a single statement: no BEGIN and COMMIT
    round trips, and the statement is atomic (and sees one snapshot) on its own. Shares the engine's pool."""
    return _autocommit(config.get_engine())


def statement_session(config: SQLAlchemyAsyncConfig) -> AsyncSession:
    """A session for single-statement reads outside a request's own session, on the autocommit engine.

    Use it as ``async with``, which gives its connection back at once: a request's own session keeps its
    connection until the response is sent, so a read made through it before the handler (authentication)
    would hold one connection while the handler waits for another.
    """
    return AsyncSession(autocommit_engine(config), expire_on_commit=False)


@functools.lru_cache(maxsize=4)  # one engine per process (tests make more)
def _autocommit(engine: AsyncEngine) -> AsyncEngine:
    # Derived once: deriving costs about as much as the round trips it saves.
    return engine.execution_options(isolation_level="AUTOCOMMIT")
