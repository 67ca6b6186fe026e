"""Rate limiting for a multi-process deployment, on Litestar's public ``ASGIMiddleware``.

Litestar's own ``RateLimitMiddleware`` reads and then writes a history list (two round trips, not atomic
across processes), sends no ``Retry-After`` and turns a store failure into a 500. This one counts with one
atomic fixed-window ``hit`` on the store (a Lua script on Redis), answers a 429 with ``Retry-After``, and,
while Redis is unreachable, counts per process in memory, so the API keeps answering and each process still
enforces the limit on its own. Its store keys and ``RateLimit-*`` headers are those of Litestar's.

A stricter limit for some routes (``stricter``: the authentication routes') is counted by the same middleware
in the same Redis call, rather than by a second middleware with a round trip of its own.

The limiter's Lua call is the first Redis round trip of every request, so it also serves as the request's
read-ahead: ``read_ahead`` names the Redis keys the request is going to read (its login session's revocation
state, the order it asks for), the same call returns their values, and the code that needs them finds them
with ``read_ahead_values``. A cached order read then costs one Redis round trip instead of three.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import structlog
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, TooManyRequestsException
from litestar.middleware import ASGIMiddleware
from litestar.middleware.rate_limit import DURATION_VALUES, DurationUnit
from prometheus_client import Counter
from redis.exceptions import RedisError

from app.observability.metrics import metric
from app.storage.stores import ATOMIC_STORES, AtomicMemoryStore, AtomicRedisStore, Window

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.connection import Request
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

RATE_LIMITED = Counter(metric("rate_limited_total"), "Requests refused with 429", ["store"])

READ_AHEAD_STATE = "redis_read_ahead"

AUTH_RATE_LIMITED = "auth_rate_limited"
"""Route handler ``opt`` key: the handler also counts against the stricter authentication limit."""


@dataclass
class SharedRateLimitConfig:
    """A fixed-window limit on ``rate_limit`` requests per unit for each ``identifier_for_request``."""

    rate_limit: tuple[DurationUnit, int]
    store: str
    """The name of its store in the app's registry: an ``AtomicRedisStore`` or ``AtomicMemoryStore``."""
    identifier_for_request: Callable[[Request[Any, Any, Any]], str]
    exclude: tuple[str, ...] = ()
    """Patterns searched in the request's path: the limit leaves the requests they match alone."""
    check_throttle_handler: Callable[[Request[Any, Any, Any]], Awaitable[bool]] | None = None
    """Whether the limit counts a request its patterns don't exclude; None: every one."""
    read_ahead: Callable[[Request[Any, Any, Any]], list[str]] = field(default=lambda _: [])
    """The full Redis keys the request will read, fetched in the limiter's round trip."""
    stricter: SharedRateLimitConfig | None = None
    """A second limit, counted along for the requests it applies to (its ``exclude`` and
    ``check_throttle_handler`` decide); those requests get its headers. Its store is on the same Redis."""

    @property
    def middleware(self) -> SharedRateLimitMiddleware:
        return SharedRateLimitMiddleware(self)


class SharedRateLimitMiddleware(ASGIMiddleware):
    """Counts ``config``'s limit, and its ``stricter`` one where it applies, on HTTP requests."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, config: SharedRateLimitConfig) -> None:
        self.config = config
        self.unit, self.max_requests = config.rate_limit
        self.window_seconds = DURATION_VALUES[self.unit]
        self.excluded = re.compile("|".join(config.exclude)) if config.exclude else None
        # On the request's path, as Litestar 2's exclude_path_pattern matches; Litestar 3's will match the
        # handler's path instead, and 2 warns of it on each excluded request.
        self.should_bypass_for_scope = self.is_excluded
        self.fallback = AtomicMemoryStore()
        self.store_failing = False
        # The stricter limit's own middleware: never in the stack; its methods decide and count that limit.
        self.stricter = type(self)(config.stricter) if config.stricter else None

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request: Request[Any, Any, Any] = scope["litestar_app"].request_class(scope)
        if not await self.should_check_request(request):
            await next_app(scope, receive, send)
            return
        stricter = self.stricter if self.stricter and await self.stricter.applies(request) else None
        windows = await self.count(request, stricter)
        if (read := windows[-1][1].read) is not None:
            scope["state"][READ_AHEAD_STATE] = read
        for limit, window in windows:  # the stricter first: a 429 tells the window that refused
            limit.check(window)
        shown, window = windows[0]
        headers = shown.window_headers(window)
        try:
            await next_app(scope, receive, _adding_headers(send, headers))
        except HTTPException as exc:
            # Raised by the middleware inside (authentication): its response is sent from outside this one,
            # so the window's headers travel with the exception.
            exc.headers = {**headers, **(exc.headers or {})}
            raise

    async def should_check_request(self, request: Request[Any, Any, Any]) -> bool:
        check = self.config.check_throttle_handler
        return True if check is None else await check(request)

    def is_excluded(self, scope: Scope) -> bool:
        return self.excluded is not None and self.excluded.search(scope["path"]) is not None

    async def applies(self, request: Request[Any, Any, Any]) -> bool:
        """Whether this limit counts the request, as its exclusions would decide were it in the stack."""
        return not self.is_excluded(request.scope) and await self.should_check_request(request)

    def cache_key_from_request(self, request: Request[Any, Any, Any]) -> str:
        """The client's key in the store, named as Litestar's rate limiter names it."""
        key = f"{type(self).__name__}::{self.config.identifier_for_request(request)}"
        handler = request.scope["route_handler"]
        if getattr(handler, "is_mount", False):
            key += "::mount"
        if getattr(handler, "is_static", False):
            key += "::static"
        return key

    async def count(
        self, request: Request[Any, Any, Any], stricter: SharedRateLimitMiddleware | None
    ) -> list[tuple[SharedRateLimitMiddleware, Window]]:
        """Count the request in this limit's window and ``stricter``'s, in one call if both are on Redis:
        each limit with its window, the stricter first."""
        app, key = request.app, self.cache_key_from_request(request)
        store, read = self.store(app), self.config.read_ahead(request)
        if stricter is None:
            return [(self, await self.hit(key, store, read))]
        strict_key, strict_store = stricter.cache_key_from_request(request), stricter.store(app)
        if not isinstance(store, AtomicRedisStore) or not isinstance(strict_store, AtomicRedisStore):
            window = await self.hit(key, store, read)
            return [(stricter, await stricter.hit(strict_key, strict_store)), (self, window)]
        also = [(strict_store.full_key(strict_key), stricter.window_seconds)]
        window = await self.hit(key, store, read, also)
        if window.also:
            strict_window = Window(*window.also[0])
        else:  # Redis failed: counted per process, like this limit
            strict_window = await stricter.fallback.hit(strict_key, stricter.window_seconds)
        return [(stricter, strict_window), (self, window)]

    def store(self, app: Litestar) -> Any:
        return app.stores.get(self.config.store)

    async def hit(
        self, key: str, store: Any, read: Sequence[str] = (), also: Sequence[tuple[str, int]] = ()
    ) -> Window:
        if not isinstance(store, ATOMIC_STORES):
            raise TypeError(f"rate limit store {self.config.store!r} can't count windows")
        try:
            if also:
                assert isinstance(store, AtomicRedisStore)
                window = await store.hit(key, self.window_seconds, read, also)
            else:
                window = await store.hit(key, self.window_seconds, read)
        except RedisError as exc:
            if not self.store_failing:
                log.warning("rate limit store unreachable, counting per process", error=str(exc))
            self.store_failing = True
            return await self.fallback.hit(key, self.window_seconds)
        if self.store_failing:
            log.info("rate limit store reachable again")
            self.store_failing = False
        return window

    def check(self, window: Window) -> None:
        if window.requests > self.max_requests:
            self.refuse(window)

    def refuse(self, window: Window) -> NoReturn:
        RATE_LIMITED.labels(self.config.store).inc()
        headers = self.window_headers(window)
        headers["Retry-After"] = str(max(window.resets_in, 1))
        raise TooManyRequestsException(
            detail=f"Rate limit of {self.max_requests} requests per {self.unit} exceeded", headers=headers
        )

    def window_headers(self, window: Window) -> dict[str, str]:
        return {
            "RateLimit-Policy": f"{self.max_requests};w={self.window_seconds}",
            "RateLimit-Limit": str(self.max_requests),
            "RateLimit-Remaining": str(max(self.max_requests - window.requests, 0)),
            "RateLimit-Reset": str(window.resets_in),
        }


def read_ahead_values(scope: Scope) -> Mapping[str, bytes | None]:
    """What the limiter read ahead for the request: key -> value (None: no such key); empty if nothing."""
    return scope["state"].get(READ_AHEAD_STATE, {})  # type: ignore[no-any-return]


def _adding_headers(send: Send, headers: dict[str, str]) -> Send:
    items = headers.items()

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            # Appended, not set through MutableScopeHeaders: nothing else sets these headers, and it
            # searches the list for each one.
            encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items]
            message["headers"] = [*message.get("headers", ()), *encoded]
        await send(message)

    return send_with_headers


@dataclass(frozen=True)
class ClientAddress:
    """Who a request comes from: the peer address, or ``X-Forwarded-For`` when the peer is a trusted proxy.

    The forwarded chain is read from the right, skipping trusted proxies, so a client can't choose its own
    identity by sending the header itself.
    """

    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())

    @classmethod
    def trusting(cls, proxies: Iterable[str]) -> ClientAddress:
        return cls(tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies))

    def __call__(self, request: Request[Any, Any, Any]) -> str:
        peer = request.client.host if request.client else "unknown"
        if not self.trusted_proxies or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in request.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)


def _only_handlers_marked(opt_key: str) -> Callable[[Request[Any, Any, Any]], Awaitable[bool]]:
    async def marked(request: Request[Any, Any, Any]) -> bool:
        return bool(request.route_handler.opt.get(opt_key))

    return marked


def rate_limit_config(
    rate: tuple[DurationUnit, int],
    *,
    store: str,
    client_address: ClientAddress,
    only_opt: str | None = None,
    read_ahead: Callable[[Request[Any, Any, Any]], list[str]] | None = None,
    stricter: SharedRateLimitConfig | None = None,
) -> SharedRateLimitConfig:
    """A limiter on its own store; ``only_opt`` restricts it to handlers whose ``opt`` sets that key."""
    return SharedRateLimitConfig(
        rate_limit=rate,
        store=store,
        identifier_for_request=client_address,
        exclude=(r"^/health", r"^/schema", r"^/docs"),
        check_throttle_handler=_only_handlers_marked(only_opt) if only_opt else None,
        read_ahead=read_ahead or (lambda _: []),
        stricter=stricter,
    )
