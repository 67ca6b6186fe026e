"""``python -m app.dev`` (``just dev``): migrate, then serve ``app.asgi:app`` with auto-reload on
127.0.0.1:``$PORT``, in one interpreter.

Run as two commands (``alembic upgrade head``, then granian), each imported the libraries the app is built on:
1.2 s of a 2.5 s start with bytecode, 3 s without. Here they are imported once, in granian's main process,
and the migration and every worker (granian forks them) start with them loaded: a worker imports only the
app's own modules, on each reload too. Nothing of ``app`` but this module is imported here, so a reloaded
worker sees the code as it is now.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from granian.constants import Interfaces
from granian.server import Server

ROOT = Path(__file__).resolve().parent.parent
# What the app imports, the costly part of its start (``python -X importtime -c 'import app.asgi'``). A
# library missing here is imported by each worker instead: slower, never wrong.
PRELOADED = (
    "advanced_alchemy.extensions.litestar",  # SQLAlchemy, Litestar, alembic and click come with it
    "aio_pika",
    "aiosqlite",
    "argon2",
    "asyncpg",
    "jwt",
    "prometheus_client",
    "redis.asyncio",
    "sqlalchemy.ext.asyncio",
    "structlog",
    "uuid_utils",
)
# Litestar loads these with every app when pydantic, or OpenTelemetry's ASGI instrumentation, is installed.
OPTIONAL_PRELOADED = ("litestar.plugins.pydantic", "litestar.plugins.opentelemetry")


def preload() -> None:
    for name in PRELOADED:
        importlib.import_module(name)
    for name in OPTIONAL_PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def migrate() -> None:
    """``alembic upgrade head``, as ``just migrate`` runs it, in a child forked from this process: it imports
    the app's models, which must stay out of the process the workers are forked from."""
    config = Config(str(ROOT / "alembic.ini"))
    child = multiprocessing.get_context("fork").Process(target=command.upgrade, args=(config, "head"))
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"orders: the migration failed (exit code {child.exitcode})")


def main() -> None:
    preload()
    migrate()
    Server(
        "app.asgi:app",
        address="127.0.0.1",
        port=int(os.environ.get("PORT") or 8000),
        interface=Interfaces.ASGI,
        reload=True,
        reload_paths=[ROOT / "app"],
    ).serve()


if __name__ == "__main__":
    main()
