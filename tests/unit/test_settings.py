from __future__ import annotations

from pathlib import Path

import pytest

from app.config import DEVELOPMENT_JWT_SECRET, RateLimit, Settings, SettingsError

PRODUCTION = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql+asyncpg://orders@db/orders",
    "REDIS_URL": "redis://cache:6379/0",
    "AMQP_URL": "amqp://orders:secret@broker/",
    "JWT_SECRET": "k" * 48,
}


def test_nothing_set_is_the_embedded_development_default() -> None:
    settings = Settings.from_env({})

    assert settings.app_env == "development"
    assert settings.database_url.startswith("sqlite+aiosqlite:")
    assert settings.redis_url == ""
    assert settings.amqp_url == ""
    assert settings.cache_ttl_seconds == 300
    assert not settings.log_as_json


def test_values_are_parsed_from_their_textual_form() -> None:
    settings = Settings.from_env(
        {
            "PORT": "9000",
            "RATE_LIMIT": "5/second",
            "AUTH_RATE_LIMIT": " 2 / hour ",
            "CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example,",
            "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "LOG_LEVEL": "debug",
            "ACCESS_TOKEN_TTL_SECONDS": "60",
        }
    )

    assert settings.port == 9000
    assert settings.rate_limit == RateLimit(requests=5, unit="second")
    assert settings.auth_rate_limit.as_config() == ("hour", 2)
    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example")
    assert settings.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert settings.log_level == "DEBUG"
    assert settings.access_token_ttl_seconds == 60


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"RATE_LIMIT": "100/fortnight"}, "RATE_LIMIT"),
        ({"RATE_LIMIT": "many/minute"}, "RATE_LIMIT"),
        ({"AUTH_RATE_LIMIT": "0/minute"}, "AUTH_RATE_LIMIT"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,not-an-ip"}, "TRUSTED_PROXIES"),
        ({"APP_ENV": "prod"}, "APP_ENV"),
        ({"CACHE_TTL_SECONDS": "0"}, "CACHE_TTL_SECONDS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"ARGON2_MEMORY_COST_KIB": "16", "ARGON2_PARALLELISM": "4"}, "ARGON2_MEMORY_COST_KIB"),
        (
            {"ACCESS_TOKEN_TTL_SECONDS": "3600", "REFRESH_TOKEN_TTL_SECONDS": "600"},
            "REFRESH_TOKEN_TTL_SECONDS",
        ),
        ({"CONSUMER_BATCH_SIZE": "0"}, "CONSUMER_BATCH_SIZE"),
        ({"CONSUMER_BATCH_WAIT_MS": "0"}, "CONSUMER_BATCH_WAIT_MS"),
        ({"CONSUMER_PREFETCH": "50", "CONSUMER_BATCH_SIZE": "100"}, "CONSUMER_PREFETCH"),
    ],
)
def test_a_bad_value_names_its_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(environ)


def test_production_with_everything_explicit_starts() -> None:
    settings = Settings.from_env(PRODUCTION)

    assert settings.is_production
    assert settings.log_as_json


def test_rate_limits_are_strict_in_production_and_roomy_in_development_unless_set() -> None:
    production, development = Settings.from_env(PRODUCTION), Settings.from_env({})
    assert (production.rate_limit, production.auth_rate_limit) == (
        RateLimit(requests=100, unit="minute"),
        RateLimit(requests=10, unit="minute"),
    )
    assert (development.rate_limit, development.auth_rate_limit) == (
        RateLimit(requests=1000, unit="minute"),
        RateLimit(requests=100, unit="minute"),
    )
    chosen = Settings.from_env({"AUTH_RATE_LIMIT": "5/minute"})
    assert chosen.auth_rate_limit == RateLimit(requests=5, unit="minute")


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "AMQP_URL", "JWT_SECRET"])
def test_production_refuses_to_run_on_a_default(missing: str) -> None:
    environ = {key: value for key, value in PRODUCTION.items() if key != missing}

    with pytest.raises(SettingsError, match=f"{missing} must be set"):
        Settings.from_env(environ)


@pytest.mark.parametrize("secret", ["short-secret", DEVELOPMENT_JWT_SECRET])
def test_production_refuses_a_weak_jwt_secret(secret: str) -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET must be a random string"):
        Settings.from_env({**PRODUCTION, "JWT_SECRET": secret})


def test_production_lists_every_problem_at_once() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"APP_ENV": "production"})

    assert all(name in str(refused.value) for name in ("DATABASE_URL", "REDIS_URL", "AMQP_URL", "JWT_SECRET"))


def env_example() -> dict[str, str]:
    lines = (Path(__file__).resolve().parents[2] / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_env_example_documents_every_setting_with_a_working_value() -> None:
    example = env_example()

    assert {name.upper() for name in Settings.__struct_fields__} <= set(example)
    settings = Settings.from_env(example)
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.redis_url
    assert settings.amqp_url


def test_env_example_leaves_empty_only_settings_whose_empty_value_is_their_default() -> None:
    # Settings ignore an empty variable; other libraries (prometheus_client) take it as a value.
    empty = {name for name, value in env_example().items() if not value.strip()}
    assert empty <= {name.upper() for name in Settings.__struct_fields__}
