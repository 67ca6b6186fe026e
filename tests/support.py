"""Helpers shared by the tests: real services, settings for a test app, and the account flow over HTTP."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
from httpx import Response
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.config import RateLimit, Settings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once
JWT_SECRET = "test-secret-that-is-long-enough-for-production-use"
PASSWORD = "correct horse battery"


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """Settings for an app under test: real services, cheap Argon2, generous limits, its own Redis keys."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": REDIS_URL,
        "redis_key_prefix": f"test-{uuid4().hex}",
        "amqp_url": AMQP_URL,
        "jwt_secret": JWT_SECRET,
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 8,
        "argon2_parallelism": 1,
        "rate_limit": RateLimit(requests=10_000, unit="minute"),
        "auth_rate_limit": RateLimit(requests=10_000, unit="minute"),
        "log_format": "console",
    }
    return Settings(**{**values, **overrides})


def same_stores(settings: Settings, **overrides: Any) -> Settings:
    """Another process of the same deployment: same database and Redis keys, possibly other settings."""
    return msgspec.structs.replace(settings, **overrides)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@dataclass
class Account:
    email: str
    password: str
    id: str = ""
    tokens: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.tokens["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_email() -> str:
    return f"user-{uuid4().hex[:12]}@example.com"


async def register(
    client: AsyncTestClient[Any], email: str | None = None, password: str = PASSWORD
) -> Account:
    account = Account(email=email or new_email(), password=password)
    response = await client.post("/register", json={"email": account.email, "password": password})
    assert response.status_code == 201, response.text
    account.id = response.json()["id"]
    return account


async def login(client: AsyncTestClient[Any], account: Account) -> Account:
    response = await token_request(client, account.email, account.password)
    assert response.status_code == 200, response.text
    account.tokens = response.json()
    return account


async def signed_up(client: AsyncTestClient[Any]) -> Account:
    return await login(client, await register(client))


async def token_request(client: AsyncTestClient[Any], username: str, password: str) -> Response:
    return await client.post("/token", data={"username": username, "password": password})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
