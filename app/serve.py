"""``python -m app.serve``: the API role in production, granian serving ``app.asgi:app``.

``WORKERS`` processes on ``PORT``, each running the app's lifespan with its own connections. On SIGTERM or
SIGINT granian stops accepting connections, lets the requests in flight finish (30 s at most), then runs
each worker's shutdown: the outbox relay stops, the RabbitMQ publisher, Redis and the database pool close.
Whenever the signal comes: a worker that does not serve yet (the instance starting, or a crashed worker being
respawned) ends at once (``stop_new_workers_on_signal``), so the instance refuses connections within a second
and its processes are gone within the drain (``tests/integration/test_sigterm.py``, at random moments).
The main process (granian's supervisor) serves the metrics on ``METRICS_PORT``, apart from the public port:
each worker writes its samples to the Prometheus multiprocess directory, emptied first, and a scrape adds up
this run's workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import FrameType

import structlog
from granian.constants import Interfaces
from granian.server import Server

from app.config import Settings, SettingsError
from app.observability.logging import configure_logging

log = structlog.get_logger("app.serve")

SHUTDOWN_GRACE_SECONDS = 30
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}  # what granian stops on, in its main process and workers
GRANIAN_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # granian's own lines go to the root logger, which app.observability.logging renders like every other
    # line (JSON in production) instead of granian's plain-text handlers on stdout.
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


def stop_at_once(signum: int, frame: FrameType | None) -> None:
    """A stop signal that reaches a worker before it serves: with nothing to drain, the worker ends as the
    signal's default action ends a process."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def stop_new_workers_on_signal() -> None:
    """Make each worker forked from now on end at once on SIGTERM or SIGINT, until granian's handlers are in.

    granian installs its main process's handlers, which only flag the main loop, before it forks the workers,
    and a worker replaces them only once it has loaded the app. A worker that the main process terminated in
    between (a SIGTERM during start-up or a respawn) ran the inherited handler, a no-op in the worker, then
    served until the main process killed it after ``workers_kill_timeout``. The stop signals are blocked
    across the fork, so that one sent before the child installs ``stop_at_once`` waits for it instead of being
    lost (CPython clears a child's pending signals before its fork hooks run).
    """
    masks: list[set[int | signal.Signals]] = []  # the forking thread's mask, until the fork is done

    def block() -> None:
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS))

    def restore() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, masks.pop())

    def in_child() -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, stop_at_once)
        restore()  # a signal that came meanwhile is delivered now, to stop_at_once

    os.register_at_fork(before=block, after_in_parent=restore, after_in_child=in_child)


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
    stop_new_workers_on_signal()
    server.serve()


if __name__ == "__main__":
    main()
