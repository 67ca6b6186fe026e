"""CORS answers in the service's own terms, from Litestar's CORS middleware (configured by ``CORSConfig``).

Litestar refuses a preflight (origin, method or headers not allowed) with a plain-text 400, and puts the
allowed methods and headers on every response, whatever the origin. Here a refused preflight is a problem
document like every other error, and an origin that is not allowed gets no ``Access-Control-*`` header at all.

``cors_config`` builds the configuration from names the caller passes (the app wires in the headers its
handlers set and the methods its routes answer), so this module knows nothing of the domains.

Litestar places its CORS middleware outside the app's own middleware, and answers a preflight before any
route is matched, so no middleware of ours sees those answers; a ``before_send`` hook sees every response.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from litestar.config.cors import CORSConfig

from app.web.errors import PROBLEM_MEDIA_TYPE, ProblemDetails

if TYPE_CHECKING:
    from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Method, Scope

_CORS_HEADER_PREFIX = b"access-control-"
_REFUSAL_KEY = "cors_refusal"
"""In the scope's state: the plain-text reason of a refused preflight, as much of it as has been sent."""


def cors_config(
    origins: Iterable[str],
    *,
    methods: Iterable[Method],
    request_headers: Iterable[str],
    response_headers: Iterable[str],
) -> CORSConfig | None:
    """Cross-origin access for ``origins`` (none if empty), with credentials: the ``methods`` the routes
    answer, the ``request_headers`` a client may send, and the ``response_headers`` its script may read (a
    browser hides any other but the CORS-safelisted ones, ``Content-Type`` among them)."""
    allowed = list(origins)
    if not allowed:
        return None
    return CORSConfig(
        allow_origins=allowed,
        allow_methods=sorted(set(methods)),
        allow_headers=list(dict.fromkeys(request_headers)),
        expose_headers=list(dict.fromkeys(response_headers)),
        allow_credentials=True,
    )


class CORSRefusals:
    def __init__(self, config: CORSConfig) -> None:
        self.config = config

    async def before_send(self, message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            self._on_start(message, scope)
        elif message["type"] == "http.response.body" and _REFUSAL_KEY in scope["state"]:
            _refusal_as_problem(message, scope)

    def _on_start(self, message: HTTPResponseStartEvent, scope: Scope) -> None:
        origin = _origin(scope)
        if origin is None:
            return
        if not self.config.is_origin_allowed(origin):
            message["headers"] = [
                (name, value)
                for name, value in message.get("headers", ())
                if not name.lower().startswith(_CORS_HEADER_PREFIX)
            ]
        # Every preflight is the CORS middleware's answer, and a 400 its refusal.
        if scope.get("method") == "OPTIONS" and message["status"] == 400:
            scope["state"][_REFUSAL_KEY] = b""
            # The problem document's length is known once the reason has been read: the server frames it.
            message["headers"] = [
                *(
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() not in {b"content-type", b"content-length"}
                ),
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            ]


def _refusal_as_problem(message: HTTPResponseBodyEvent, scope: Scope) -> None:
    """Sends nothing of the plain-text reason until its last part, which becomes the problem document."""
    reason: bytes = scope["state"][_REFUSAL_KEY] + message.get("body", b"")
    scope["state"][_REFUSAL_KEY] = reason
    if message.get("more_body", False):
        message["body"] = b""
        return
    message["body"] = msgspec.json.encode(
        ProblemDetails(status=400, title="Bad Request", detail=reason.decode() or "CORS refused")
    )


def _origin(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return value.decode("latin-1")
    return None
