"""Every setting of the service, read once from the environment.

Defaults give a development service that runs with nothing else installed (SQLite file, in-memory
stores, no broker). ``APP_ENV=production`` refuses those defaults and a weak JWT secret.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

Environment = Literal["development", "production"]
RateUnit = Literal["second", "minute", "hour", "day"]

DEVELOPMENT_JWT_SECRET = "development-only-secret-never-use-in-production"  # noqa: S105
MIN_JWT_SECRET_LENGTH = 32
REQUIRED_IN_PRODUCTION = ("DATABASE_URL", "REDIS_URL", "AMQP_URL", "JWT_SECRET")

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
# What development uses where the environment sets nothing; the fields' own defaults are production's. A
# person exploring the API by hand (registering, logging in, refreshing) would hit 10 a minute at once.
DEVELOPMENT_DEFAULTS = {"rate_limit": "1000/minute", "auth_rate_limit": "100/minute"}


class SettingsError(Exception):
    """The environment does not describe a service that can start."""


class RateLimit(msgspec.Struct, frozen=True):
    """``100/minute`` as written in ``RATE_LIMIT``."""

    requests: PositiveInt
    unit: RateUnit

    def as_config(self) -> tuple[RateUnit, int]:
        """The ``rate_limit`` tuple of Litestar's ``RateLimitConfig``."""
        return (self.unit, self.requests)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    app_env: Environment = "development"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    workers: PositiveInt = 2
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9100
    database_url: str = "sqlite+aiosqlite:///orders.db"
    database_pool_size: PositiveInt = 20
    redis_url: str = ""
    redis_key_prefix: str = "orders"
    redis_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 0.25
    amqp_url: str = ""
    events_exchange: str = "orders"
    consumer_prefetch: PositiveInt = 256
    consumer_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    consumer_batch_wait_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50
    consumer_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9101
    outbox_relay_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    outbox_retention_seconds: PositiveInt = 24 * 3600
    idempotency_key_ttl_seconds: PositiveInt = 24 * 3600
    retention_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    celery_broker_url: str = ""
    celery_queue: str = "orders.process_orders"
    worker_concurrency: PositiveInt = 8
    jwt_secret: str = DEVELOPMENT_JWT_SECRET
    jwt_issuer: str = "orders"
    jwt_audience: str = "orders-api"
    access_token_ttl_seconds: PositiveInt = 900
    refresh_token_ttl_seconds: PositiveInt = 14 * 24 * 3600
    rate_limit: RateLimit = RateLimit(requests=100, unit="minute")
    auth_rate_limit: RateLimit = RateLimit(requests=10, unit="minute")
    trusted_proxies: tuple[str, ...] = ()
    cors_allowed_origins: tuple[str, ...] = ()
    cache_ttl_seconds: PositiveInt = 300
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] | None = None
    # Argon2id cost; the defaults are argon2-cffi's (RFC 9106 low-memory profile).
    argon2_time_cost: PositiveInt = 3
    argon2_memory_cost_kib: Annotated[int, msgspec.Meta(ge=8)] = 65536
    argon2_parallelism: PositiveInt = 4
    password_hash_concurrency: PositiveInt = 1

    def __post_init__(self) -> None:
        if self.argon2_memory_cost_kib < 8 * self.argon2_parallelism:
            raise ValueError("ARGON2_MEMORY_COST_KIB must be at least 8 times ARGON2_PARALLELISM")
        if self.refresh_token_ttl_seconds < self.access_token_ttl_seconds:
            # A revocation is remembered until its session expires; an access token must not outlive that.
            raise ValueError("REFRESH_TOKEN_TTL_SECONDS must be at least ACCESS_TOKEN_TTL_SECONDS")
        if self.consumer_prefetch < self.consumer_batch_size:
            # The broker would never hand over enough events to fill a batch: each would wait its full time.
            raise ValueError("CONSUMER_PREFETCH must be at least CONSUMER_BATCH_SIZE")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ValueError(f"TRUSTED_PROXIES: {exc}") from None

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def celery_broker(self) -> str:
        """The Celery broker: CELERY_BROKER_URL, or the event broker when it is not set."""
        return self.celery_broker_url or self.amqp_url

    @property
    def log_as_json(self) -> bool:
        return self.log_format == "json" if self.log_format else self.is_production

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from environment variables named like the fields, upper case."""
        environ = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for name in cls.__struct_fields__:
            value = environ.get(name.upper(), "").strip()
            if value:
                raw[name] = _parse(name, value)
        if raw.get("app_env", "development") == "development":
            for name, value in DEVELOPMENT_DEFAULTS.items():
                raw.setdefault(name, _parse(name, value))
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"invalid setting: {_name_env_var(str(exc))}") from None
        if settings.is_production:
            settings.check_production(environ)
        return settings

    def check_production(self, environ: Mapping[str, str]) -> None:
        """Refuse the development defaults, so production never runs on them by accident."""
        problems = [
            f"{name} must be set" for name in REQUIRED_IN_PRODUCTION if not environ.get(name, "").strip()
        ]
        if environ.get("JWT_SECRET", "").strip() and (
            len(self.jwt_secret) < MIN_JWT_SECRET_LENGTH or self.jwt_secret == DEVELOPMENT_JWT_SECRET
        ):
            problems.append(
                f"JWT_SECRET must be a random string of at least {MIN_JWT_SECRET_LENGTH} characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if problems:
            raise SettingsError("APP_ENV=production refuses to start: " + "; ".join(problems))


def _parse(name: str, value: str) -> object:
    """Turn the textual forms (lists, rates) into what ``msgspec.convert`` expects."""
    if name in {"rate_limit", "auth_rate_limit"}:
        count, _, unit = value.partition("/")
        return {"requests": count.strip(), "unit": unit.strip()}
    if name in {"trusted_proxies", "cors_allowed_origins"}:
        return [item.strip() for item in value.split(",") if item.strip()]
    if name == "log_level":
        return value.upper()
    return value


def _name_env_var(message: str) -> str:
    """msgspec says ``... - at `$.rate_limit.unit```; name the variable the operator actually sets."""
    text, _, path = message.rpartition(" - at `$.")
    if not text:
        return message
    field = path.rstrip("`").split(".")[0].split("[")[0]
    return f"{field.upper()}: {text}"
