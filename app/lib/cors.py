"""CORS answers in the service's own terms, around Litestar's CORS middleware (configured by ``CORSConfig``).

Litestar refuses a preflight (origin, method or headers not allowed) with a plain-text 400, and puts the
allowed methods and headers on every response, whatever the origin. Here a refused preflight is a problem
document like every other error, and an origin that is not allowed gets no ``Access-Control-*`` header at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar.enums import ScopeType

from app.lib.errors import PROBLEM_MEDIA_TYPE, ProblemDetails

if TYPE_CHECKING:
    from litestar.config.cors import CORSConfig
    from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

_CORS_HEADER_PREFIX = b"access-control-"


class CORSRefusals:
    def __init__(self, app: ASGIApp, config: CORSConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _origin(scope) if scope["type"] == ScopeType.HTTP else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        foreign = not self.config.is_origin_allowed(origin)
        preflight = scope.get("method") == "OPTIONS"
        if not foreign and not preflight:
            await self.app(scope, receive, send)
            return
        refused: HTTPResponseStartEvent | None = None
        body = b""

        async def send_in_our_terms(message: Message) -> None:
            nonlocal refused, body
            if message["type"] == "http.response.start":
                if foreign:
                    message["headers"] = [
                        (name, value)
                        for name, value in message.get("headers", ())
                        if not name.lower().startswith(_CORS_HEADER_PREFIX)
                    ]
                if preflight and message["status"] == 400:
                    refused = message  # held until its plain-text reason has been read
                    return
            elif refused is not None and message["type"] == "http.response.body":
                body += message.get("body", b"")
                if message.get("more_body", False):
                    return
                problem = msgspec.json.encode(
                    ProblemDetails(status=400, title="Bad Request", detail=body.decode() or "CORS refused")
                )
                refused["headers"] = [
                    *(
                        (name, value)
                        for name, value in refused.get("headers", ())
                        if name.lower() not in {b"content-type", b"content-length"}
                    ),
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(problem)).encode()),
                ]
                await send(refused)
                message = {"type": "http.response.body", "body": problem, "more_body": False}
            await send(message)

        await self.app(scope, receive, send_in_our_terms)


def _origin(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return value.decode("latin-1")
    return None
