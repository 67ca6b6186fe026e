"""The API role: ``create_app()`` wires settings, plugins, middleware and routes into a Litestar app.

Importing this module builds nothing; ``app.asgi`` builds the app granian and the Litestar CLI serve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar, Request, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components
from litestar.response import Redirect

from app.accounts.auth import BearerAuth, bearer_auth
from app.accounts.cli import AccountsCLIPlugin
from app.accounts.controller import AccountController
from app.accounts.revocations import RevocationSyncPlugin, RevokedSessions
from app.accounts.security import PasswordHasher, TokenCodec, scope_header, unverified_session_id
from app.config import Settings, SettingsError
from app.docs.openapi import RATE_LIMITED_RESPONSE, TOO_MANY_REQUESTS, StrictStructSchemaPlugin
from app.docs.pages import assets_router, docs_router, render_plugins
from app.messaging.broker import AmqpPublisher
from app.messaging.outbox import Outbox, OutboxPlugin, publisher_for
from app.observability.health import HealthController, ReadinessChecks
from app.observability.logging import REQUEST_ID_HEADER, RequestContext, configure_logging
from app.observability.metrics import prometheus_config
from app.observability.tracing import start_tracing
from app.orders.cache import ORDER_CACHE_STORE, OrderCache
from app.orders.cli import EventsCLIPlugin
from app.orders.controller import (
    IDEMPOTENCY_KEY_HEADER,
    READS_CACHED_ORDER,
    RESPONSE_HEADERS,
    OrderController,
)
from app.orders.events import NEW_ORDER
from app.orders.processing import in_process_handler
from app.orders.services import OrderReader, OrderService
from app.retention import Retention, RetentionPlugin
from app.storage.db import sqlalchemy_config
from app.storage.redis import create_redis
from app.storage.redis_pipe import close_pipelined
from app.storage.stores import AtomicStore, create_stores
from app.web.cors import CORSRefusals, cors_config
from app.web.errors import exception_handlers
from app.web.media_types import require_declared_media_type
from app.web.rate_limit import AUTH_RATE_LIMITED, ClientAddress, rate_limit_config

if TYPE_CHECKING:
    from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
    from litestar.plugins import PluginProtocol
    from litestar.stores.registry import StoreRegistry
    from litestar.types import Method, Middleware
    from redis.asyncio import Redis

MAX_BODY_BYTES = 1024 * 1024
_UUID_LENGTH = len(str(UUID(int=0)))
_MAX_REMEMBERED_HEADER = 1024  # characters; an access token's Authorization header is about 400
METHODS: tuple[Method, ...] = ("GET", "HEAD", "OPTIONS", "PATCH", "POST")
"""The methods the routes answer (HEAD: the docs' assets), which CORS allows; a test holds it to them."""


@get("/docs", include_in_schema=False, opt={"exclude_from_auth": True})
async def docs() -> Redirect:
    return Redirect("/schema/swagger")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    # First: the services below create their clients with the instrumentations already in place.
    traced = start_tracing("api", instrument_amqp=bool(settings.amqp_url))
    configure_logging(level=settings.log_level, as_json=settings.log_as_json)
    services = Services.from_settings(settings)
    request_context = RequestContext()
    cors = cors_config(
        settings.cors_allowed_origins,
        methods=METHODS,
        request_headers=["Authorization", "Content-Type", IDEMPOTENCY_KEY_HEADER, REQUEST_ID_HEADER],
        # Every header the API documents on a response: the request id, the rate limits', the handlers'.
        response_headers=[REQUEST_ID_HEADER, *RATE_LIMITED_RESPONSE, *TOO_MANY_REQUESTS, *RESPONSE_HEADERS],
    )
    return Litestar(
        route_handlers=[AccountController, OrderController, HealthController, docs, assets_router()],
        dependencies=services.dependencies(),
        plugins=[*_plugins(services), *_tracing_plugins(traced)],
        middleware=_middleware(services, request_context),
        guards=[require_declared_media_type],  # a body in another media type than the route reads: 415
        # Hooks on every response, those the middleware never sees included (see RequestContext).
        before_send=[request_context.before_send, *([CORSRefusals(cors).before_send] if cors else [])],
        exception_handlers=exception_handlers(),  # every error a problem document (app/web/errors.py)
        stores=services.stores,
        cors_config=cors,
        openapi_config=_openapi(services.auth.openapi_components),
        on_shutdown=services.on_shutdown(),
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,
        debug=False,
    )


@dataclass(frozen=True)
class Services:
    """What one API process holds for its lifetime: its connections, and what its handlers are given."""

    settings: Settings
    db: SQLAlchemyAsyncConfig
    redis: Redis | None
    stores: StoreRegistry
    hasher: PasswordHasher
    tokens: TokenCodec
    revoked: RevokedSessions
    auth: BearerAuth
    order_cache: OrderCache
    amqp: AmqpPublisher | None
    outbox: Outbox

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        db = sqlalchemy_config(settings.database_url, settings.database_pool_size)
        redis = (
            create_redis(settings.redis_url, settings.redis_timeout_seconds) if settings.redis_url else None
        )
        tokens = TokenCodec.from_settings(settings)
        revoked = RevokedSessions(redis, settings.redis_key_prefix, max_lifetime=tokens.refresh_ttl, db=db)
        stores = create_stores(redis, settings.redis_key_prefix)
        order_cache = OrderCache(
            cast("AtomicStore", stores.get(ORDER_CACHE_STORE)), settings.cache_ttl_seconds
        )
        publisher = publisher_for(settings, NEW_ORDER, in_process_handler(db, order_cache))
        amqp = publisher if isinstance(publisher, AmqpPublisher) else None  # readiness reports its connection
        return cls(
            settings=settings,
            db=db,
            redis=redis,
            stores=stores,
            hasher=PasswordHasher.from_settings(settings),
            tokens=tokens,
            revoked=revoked,
            auth=bearer_auth(tokens, revoked),
            order_cache=order_cache,
            amqp=amqp,
            outbox=Outbox(db, publisher, settings.outbox_relay_interval_seconds),
        )

    @property
    def key_lifetime(self) -> timedelta:
        """How long an order's ``Idempotency-Key`` holds."""
        return timedelta(seconds=self.settings.idempotency_key_ttl_seconds)

    def dependencies(self) -> dict[str, Provide]:
        return {
            "settings": _singleton(self.settings),
            "redis": _singleton(self.redis),
            "hasher": _singleton(self.hasher),
            "tokens": _singleton(self.tokens),
            "revoked": _singleton(self.revoked),
            "order_reader": _singleton(OrderReader(self.order_cache, self.db)),
            "orders": _singleton(OrderService(self.db, self.order_cache, self.outbox, self.key_lifetime)),
            "readiness": _singleton(ReadinessChecks(self.db, self.redis, self.amqp)),
        }

    def on_shutdown(self) -> list[Callable[[], object]]:
        if self.redis is None:
            return []
        return [functools.partial(close_pipelined, self.redis), self.redis.aclose]


def _plugins(services: Services) -> list[PluginProtocol]:
    return [
        SQLAlchemyPlugin(config=services.db),
        OutboxPlugin(services.outbox),  # after the database's plugin: see OutboxPlugin
        RetentionPlugin(Retention.from_settings(services.db, services.settings)),  # likewise
        RevocationSyncPlugin(services.revoked),  # likewise
        StrictStructSchemaPlugin(),
        AccountsCLIPlugin(),
        EventsCLIPlugin(),
    ]


def _tracing_plugins(traced: bool) -> list[PluginProtocol]:
    """Litestar's OpenTelemetry plugin: a server span around every request, outside everything else (the
    app's exception handling included), named after its route; no spans of the ASGI messages themselves."""
    if not traced:
        return []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin  # noqa: PLC0415

    return [OpenTelemetryPlugin(OpenTelemetryConfig(exclude_spans=["receive", "send"]))]


def _middleware(services: Services, request_context: RequestContext) -> list[Middleware]:
    settings = services.settings
    client_address = ClientAddress.trusting(settings.trusted_proxies)
    return [
        request_context,  # first, so that the lines of the middleware below carry the request id
        # Rate limits come before authentication, so floods of bad tokens are limited too. One middleware
        # counts both limits, in one Redis call; on auth routes the stricter one's headers are the ones a
        # client sees.
        rate_limit_config(
            settings.rate_limit.as_config(),
            store="rate_limit",
            client_address=client_address,
            read_ahead=_read_ahead(services.revoked, services.order_cache),
            stricter=rate_limit_config(
                settings.auth_rate_limit.as_config(),
                store="auth_rate_limit",
                client_address=client_address,
                only_opt=AUTH_RATE_LIMITED,
            ),
        ).middleware,
        services.auth.middleware,
        # Innermost: it records the status a handler answered with; 401s and 429s raised by the middleware
        # above never reach it (see orders_rate_limited_total for the latter).
        prometheus_config().middleware,
    ]


def _read_ahead(
    revoked: RevokedSessions, order_cache: OrderCache
) -> Callable[[Request[Any, Any, Any]], list[str]]:
    """The Redis keys a request will read: its session's revocation state, and the order it asks for."""

    def session_keys(authorization: str | None) -> tuple[str, ...]:
        return tuple(revoked.keys_for(unverified_session_id(authorization)))

    # Per Authorization header: a client sends the same one request after request, and decoding the token's
    # payload and formatting the keys every time was a measurable share of a cached read. Headers longer than
    # any token of ours aren't kept, so that junk can't make the cache big.
    remembered_session_keys = functools.lru_cache(maxsize=4096)(session_keys)

    def keys(request: Request[Any, Any, Any]) -> list[str]:
        authorization = scope_header(request.scope, b"authorization")
        if authorization is not None and len(authorization) > _MAX_REMEMBERED_HEADER:
            wanted = [*session_keys(authorization)]
        else:
            wanted = [*remembered_session_keys(authorization)]
        if request.route_handler.opt.get(READS_CACHED_ORDER):
            order_id: str = request.path_params["order_id"]
            if len(order_id) == _UUID_LENGTH:  # else not a UUID: the handler answers 4xx without reading it
                # As written in the path: in another spelling it is not the cache's key, and the cache reads
                # its own key (a second round trip) rather than finding it read ahead.
                wanted.append(order_cache.store.full_key(order_id))
        return wanted

    return keys


def _singleton(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def _openapi(security_components: Components) -> OpenAPIConfig:
    return OpenAPIConfig(
        components=security_components,
        title="orders",
        version="0.1.0",
        description="Order service API. Log in at `/token`, then send `Authorization: Bearer <token>`.",
        render_plugins=render_plugins(),
        openapi_router=docs_router(),
    )


def create_app_from_environment() -> Litestar:
    """The app the environment's settings describe; invalid settings end the process with the reason."""
    try:
        return create_app()
    except SettingsError as exc:
        raise SystemExit(f"orders: {exc}") from None  # the reason, without a traceback around it
