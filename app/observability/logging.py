"""Structured logging for every process role, and the request id that ties a request's lines together."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import sys
import time
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO, cast

import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from structlog.typing import EventDict, Processor, ProcessorReturnValue, WrappedLogger

from app.observability.tracing import add_trace_ids

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()
_HANDLER_NAME = "app"
_CONTEXT_KEY = "request_context"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""A request id a client may choose (others are replaced by a new one)."""
_VALID_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def configure_logging(*, level: str, as_json: bool) -> None:
    """One line per event on stderr: JSON objects in production, readable lines in development.

    Our own lines go through structlog's native logger, which writes directly (a fraction of the cost of
    the standard library's machinery, which matters on every request). Lines of libraries that log through
    the standard library (granian, SQLAlchemy, Celery, aio-pika) are rendered the same way by a handler.
    While tracing is on, a line written within a span carries its ``trace_id`` and ``span_id``.

    Called again (another app in the process: tests), it changes the lines of every logger, those cached on
    their first use included; the level of a logger already cached stays the one it was cached with.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,  # nothing but a check while tracing is off
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = _renderer(as_json)
    # The console renderer formats an exception itself.
    exceptions = [structlog.processors.format_exc_info] if as_json else []
    _PIPELINE.processors = [*shared, *exceptions, renderer]
    structlog.configure(
        processors=[_PIPELINE],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_NamedLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [
        *(h for h in root.handlers if h.name != _HANDLER_NAME),
        _standard_library_handler(shared, renderer, as_json),
    ]
    root.setLevel(level)


class _Pipeline:
    """structlog's one processor, which runs the processors of the latest configuration.

    A logger cached on its first use keeps the processors it was made with; this one being all of them, it
    follows a later configuration too, for one function call more per line.
    """

    def __init__(self) -> None:
        self.processors: list[Processor] = []

    def __call__(self, logger: WrappedLogger, method_name: str, event: EventDict) -> ProcessorReturnValue:
        result: Any = event  # the renderer's string, after the last one
        for processor in self.processors:
            result = processor(logger, method_name, result)
        return cast("ProcessorReturnValue", result)


_PIPELINE = _Pipeline()


def _renderer(as_json: bool) -> Processor:
    if as_json:
        return structlog.processors.JSONRenderer(serializer=_json)
    # A plain traceback: structlog's default (rich, when installed) prints every frame's local variables,
    # passwords and tokens included, and takes seconds of the event loop to render.
    return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)


def _standard_library_handler(shared: list[Processor], renderer: Processor, as_json: bool) -> logging.Handler:
    """Renders the lines of libraries that log through the standard library as structlog renders ours."""
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
    return handler


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


class RequestContext(ASGIMiddleware):
    """Gives every request an id (the client's ``X-Request-ID`` if it is sane, else a new one), binds it to
    every log line of the request, returns it in the response and logs one access line.

    No single Litestar hook sees a whole request, so two share the work. As the first of the app's
    middleware, it begins the context before rate limiting and authentication run, so their lines carry
    the id; but route middleware runs only for requests that match a route, and answers made by the
    app-level exception handler (401 and 429 raised by middleware, 404, 405) or by the CORS middleware never
    pass through it. ``before_send``, one of the app's ``before_send`` hooks, sees every response: it puts the
    id on it, and ends the context with its last message. A request that matched no route (a 404, a 405, a
    CORS preflight) begins its context there, with its response.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self) -> None:
        # Bound now, after configure_logging: the lazy proxy get_logger returns resolves itself on every call.
        self.log = structlog.get_logger("app.access").bind()

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        _begin(scope)
        await next_app(scope, receive, send)

    async def before_send(self, message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            context = _begin(scope)
            context.status = message["status"]
            message["headers"] = [
                *message.get("headers", ()),
                (_REQUEST_ID_NAME, context.request_id.encode()),
            ]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self._end(scope)

    def _end(self, scope: Scope) -> None:
        context: _Context | None = scope["state"].pop(_CONTEXT_KEY, None)
        if context is None:
            return
        self.log.info(
            "request",
            method=scope.get("method"),
            path=scope["path"],
            status=context.status,
            duration_ms=round((time.perf_counter() - context.started) * 1000, 2),
        )
        # A streamed body (a file's) sends its last message from a task of its own, in a copy of the request's
        # context that the tokens don't belong to; that copy ends with the task, so nothing is left bound.
        with contextlib.suppress(ValueError):
            structlog.contextvars.reset_contextvars(**context.bound)


@dataclass(slots=True)
class _Context:
    """A request's context, kept in its scope's state from its beginning to its response's last message."""

    request_id: str
    started: float
    bound: Mapping[str, Token[Any]]
    status: int = 500


def _begin(scope: Scope) -> _Context:
    """The request's context, begun now if it had not begun yet."""
    state = scope["state"]
    context: _Context | None = state.get(_CONTEXT_KEY)
    if context is None:
        request_id = _incoming_request_id(scope) or _new_request_id()
        # bind and reset rather than bound_contextvars(), a generator-based context manager: cheaper.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        context = state[_CONTEXT_KEY] = _Context(request_id, time.perf_counter(), bound)
    return context


def current_request_id() -> str | None:
    """The id of the request (or event) being handled, to pass on to the work it causes."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return str(request_id) if request_id else None


def _new_request_id() -> str:
    # Not os.urandom: a system call per request, when a request id needs to be unique,
    # not unpredictable (clients choose their own). random reseeds in each forked worker.
    return f"{random.getrandbits(128):032x}"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID_REQUEST_ID.match(candidate) else None
    return None
