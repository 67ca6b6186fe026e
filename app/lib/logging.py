"""Structured logging for every process role, and the request id that ties a request's lines together."""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO, cast

import msgspec
import structlog
from litestar.enums import ScopeType
from structlog.typing import EventDict, Processor

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()
_HANDLER_NAME = "app"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""A request id a client may choose (others are replaced by a new one)."""
_VALID_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def configure_logging(*, level: str, as_json: bool) -> None:
    """One line per event on stderr: JSON objects in production, readable lines in development.

    Our own lines go through structlog's native logger, which writes directly (a fraction of the cost of
    the standard library's machinery, which matters on every request). Lines of libraries that log through
    the standard library (granian, SQLAlchemy, Celery, aio-pika) are rendered the same way by a handler.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if as_json
        # A plain traceback: structlog's default (rich, when installed) prints every frame's local variables,
        # passwords and tokens included, and takes seconds of the event loop to render.
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info if as_json else _keep, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_NamedLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.name = _HANDLER_NAME
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info
                if as_json
                else structlog.processors.ExceptionPrettyPrinter(),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [*(h for h in root.handlers if h.name != _HANDLER_NAME), handler]
    root.setLevel(level)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when writing: loggers are cached, the stream may be swapped (tests)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _NamedLogger(structlog.WriteLogger):
    """Writes lines to stderr and keeps the name it was asked for, which becomes the ``logger`` key."""

    def __init__(self, name: str = "") -> None:
        super().__init__(cast("TextIO", _CurrentStderr()))
        self.name = name


def _json(event: dict[str, Any], **_: Any) -> str:
    return msgspec.json.encode(event).decode()


def _keep(_: Any, __: str, event: EventDict) -> EventDict:
    return event


class RequestContextMiddleware:
    """Gives every request an id (the client's ``X-Request-ID`` if it is sane, else a new one), binds it to
    every log line of the request, returns it in the response and logs one access line.

    It wraps the application's whole ASGI handler rather than sitting in Litestar's middleware list, because
    responses made by the app-level exception handlers (401 from authentication, 429 from the rate limiter,
    404 for unknown paths) never pass through route middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Bound now, after configure_logging: the lazy proxy get_logger returns resolves itself on every
        # call, ~10% of the line's cost.
        self.log = structlog.get_logger("app.access").bind()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or _new_request_id()
        header = (_REQUEST_ID_NAME, request_id.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        # bind and reset rather than bound_contextvars(): its generator-based context manager cost ~2%.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            self.log.info(
                "request",
                method=scope.get("method"),
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.reset_contextvars(**bound)


def current_request_id() -> str | None:
    """The id of the request (or event) being handled, to pass on to the work it causes."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return str(request_id) if request_id else None


def _new_request_id() -> str:
    # Not os.urandom: a system call per request (~2% of a cached read), and a request id needs to be unique,
    # not unpredictable (clients choose their own). random reseeds in each forked worker.
    return f"{random.getrandbits(128):032x}"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID_REQUEST_ID.match(candidate) else None
    return None
