"""``python -m app.serve``: the API role in production, granian serving ``app.asgi:app``.

``WORKERS`` processes on ``PORT``, each running the app's lifespan with its own connections. On SIGTERM or
SIGINT granian stops accepting connections, lets the requests in flight finish (30 s at most), then runs
each worker's shutdown: the outbox relay stops, the RabbitMQ publisher, Redis and the database pool close.
The main process (granian's supervisor) serves the metrics on ``METRICS_PORT``, apart from the public port:
each worker writes its samples to the Prometheus multiprocess directory, emptied first, and a scrape adds up
this run's workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import structlog
from granian.constants import Interfaces
from granian.server import Server

from app.config import Settings, SettingsError
from app.lib.logging import configure_logging

log = structlog.get_logger("app.serve")

SHUTDOWN_GRACE_SECONDS = 30
GRANIAN_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # granian's own lines go to the root logger, which app.lib.logging renders like every other line (JSON in
    # production) instead of granian's plain-text handlers on stdout.
    "loggers": {
        **{name: {"handlers": [], "propagate": True} for name in ("_granian", "granian.access")},
        # Imported by advanced-alchemy in every worker, alembic's plugins announce themselves at INFO.
        "alembic": {"level": "WARNING"},
    },
}


def prepare_metrics_directory() -> Path:
    """``PROMETHEUS_MULTIPROC_DIR`` as given (emptied of a previous run), or a fresh temporary directory."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="orders-metrics-"))
    if configured:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # inherited by the workers
    return directory


def serve_metrics(directory: Path, port: int) -> int:
    """Serve the samples of every worker, added up from ``directory``, on ``port`` (0: any free port) in a
    thread of this process; the port taken. The workers forked later inherit its socket but never use it."""
    # Imported only now that PROMETHEUS_MULTIPROC_DIR is set: prometheus_client chooses where samples live
    # when it is first imported, and the workers, forked from this process, would inherit in-memory ones.
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]  # untyped upstream
    try:
        server, _ = start_http_server(port, registry=registry)
    except OSError as exc:
        raise SystemExit(f"orders: METRICS_PORT {port}: {exc.strerror}") from None
    return int(server.server_port)


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"orders: {exc}") from None
    metrics_directory = prepare_metrics_directory()
    server = Server(
        "app.asgi:app",
        address="0.0.0.0",  # noqa: S104 - a server's job; bind a narrower address behind a firewall if needed
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        workers_kill_timeout=SHUTDOWN_GRACE_SECONDS,
        respawn_failed_workers=True,
        log_dictconfig=GRANIAN_LOGGING,
    )
    # After the Server is made: it applies its logging configuration, which closes the handlers it finds.
    configure_logging(level=settings.log_level, as_json=settings.log_as_json)
    metrics_port = serve_metrics(metrics_directory, settings.metrics_port)
    log.info("serving metrics", port=metrics_port, path="/metrics")
    server.serve()


if __name__ == "__main__":
    main()
