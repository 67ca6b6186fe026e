"""The service served for real for the conformance tests: granian on loopback, production settings, its own
PostgreSQL database, Redis keys and RabbitMQ exchange, and an account to test with."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from tests.conftest import forget_redis_keys
from tests.support import (
    AMQP_URL,
    JWT_SECRET,
    PASSWORD,
    REDIS_URL,
    ROOT,
    delete_topology,
    free_port,
    migrated_database,
    new_email,
    settings_for,
    wait_until_healthy,
)

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class LiveApi:
    base_url: str
    log: Path

    @property
    def schema_url(self) -> str:
        return f"{self.base_url}/schema/openapi.json"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass(frozen=True)
class Credentials:
    email: str
    password: str


@pytest.fixture(scope="session")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """granian (two workers, ASGI) serving ``app.asgi:app`` on 127.0.0.1, as in production but with limits
    high enough that generated traffic is not refused with 429s, and cheap Argon2."""
    port, suffix = free_port(), uuid4().hex[:8]
    log = tmp_path_factory.mktemp("live-api") / "api.log"
    with migrated_database() as database_url:
        deployment = settings_for(
            database_url,
            redis_key_prefix=f"test-conformance-{suffix}",
            events_exchange=f"orders-conformance-{suffix}",
        )
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "APP_ENV": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": deployment.redis_key_prefix,
            "AMQP_URL": AMQP_URL,
            "EVENTS_EXCHANGE": deployment.events_exchange,
            "JWT_SECRET": JWT_SECRET,
            "RATE_LIMIT": "1000000/minute",
            "AUTH_RATE_LIMIT": "1000000/minute",
            "ARGON2_TIME_COST": "1",
            "ARGON2_MEMORY_COST_KIB": "8",
            "ARGON2_PARALLELISM": "1",
            "DATABASE_POOL_SIZE": "5",  # a couple of requests at a time: leave PostgreSQL to the others
            "LOG_LEVEL": "WARNING",  # errors only: thousands of requests would fill the log with access lines
        }
        command = [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as output:
            server = subprocess.Popen(
                [*command, "--workers", "2", "app.asgi:app"],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        api = LiveApi(f"http://127.0.0.1:{port}", log)
        try:
            wait_until_healthy(api.base_url, server, api.log_tail)
            yield api
        finally:
            server.terminate()
            server.wait(timeout=60)
            forget_redis_keys(deployment.redis_key_prefix)
            asyncio.run(delete_topology(deployment))


@pytest.fixture(scope="session")
def live_account(live_api: LiveApi) -> Credentials:
    """A user registered through the API, whose token the conformance run authenticates with."""
    credentials = Credentials(new_email(), PASSWORD)
    response = httpx.post(
        f"{live_api.base_url}/register",
        json={"email": credentials.email, "password": credentials.password},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return credentials
