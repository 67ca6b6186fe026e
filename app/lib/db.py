"""The SQLAlchemy configuration shared by every process role."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import AsyncSessionConfig, SQLAlchemyAsyncConfig


def sqlalchemy_config(database_url: str) -> SQLAlchemyAsyncConfig:
    return SQLAlchemyAsyncConfig(
        connection_string=database_url,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        # Commits a request's session when a 2xx response starts. Writes commit explicitly before that
        # (auto_commit=True), so a failed commit is an error response, never a 2xx for lost data.
        before_send_handler="autocommit",
        set_default_exception_handler=False,  # app.lib.errors answers for repository errors too
    )
