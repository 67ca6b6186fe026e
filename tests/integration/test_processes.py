"""The service as people run it: the embedded default, granian with two workers, the admin CLI."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.config import Settings
from tests.conftest import forget_redis_keys
from tests.support import (
    PASSWORD,
    ROOT,
    clean_env,
    eventually,
    free_port,
    new_email,
    production_api_env,
    serving,
    wait_until_healthy,
)

BIN = Path(sys.executable).parent


def migrate_embedded_database(directory: Path) -> None:
    """The embedded default's SQLite file, ``orders.db`` in ``directory``, with the schema."""
    subprocess.run(
        [BIN / "alembic", "-c", ROOT / "alembic.ini", "upgrade", "head"],
        cwd=directory,
        env=clean_env(),
        check=True,
        capture_output=True,
    )


async def processed_in_process(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    """Until the order at ``path`` is processed: on the embedded default, by the API process itself, moments
    after its creation (the outbox hands events over in batches)."""

    async def processed() -> bool:
        return (await client.get(path, headers=headers)).json()["processed_at"] is not None

    await eventually(processed, "the order to be processed in process")


async def test_embedded_default_runs_accounts_and_orders_with_no_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate_embedded_database(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})

    async with serving(settings) as client:
        email = new_email()
        assert (
            await client.post("/register", json={"email": email, "password": PASSWORD})
        ).status_code == 201
        tokens = (await client.post("/token", data={"username": email, "password": PASSWORD})).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await client.get("/users/me", headers=headers)).json()["email"] == email
        order = await client.post(
            "/orders", json={"items": [{"name": "tea", "quantity": 2, "price": "3.10"}]}, headers=headers
        )
        assert order.json()["total_price"] == "6.20"
        path = f"/orders/{order.json()['id']}"
        await processed_in_process(client, path, headers)
        assert (await client.patch(path, json={"status": "PAID"}, headers=headers)).status_code == 200
        paid = (await client.get(path, headers=headers)).json()
        assert paid["status"] == "PAID"  # through the in-memory cache
        assert paid["processed_at"] is not None  # processed in process: no broker, no worker
        listed = await client.get("/orders", headers=headers)
        assert listed.json() == [paid]
        assert listed.headers["x-total-count"] == "1"
        assert (await client.post("/logout", headers=headers)).status_code == 204
        assert (await client.get("/users/me", headers=headers)).status_code == 401
        ready = (await client.get("/health/ready")).json()

    assert (tmp_path / "orders.db").exists()
    assert ready["dependencies"]["database"]["status"] == "ok"
    assert ready["dependencies"]["redis"]["status"] == "not configured"


async def test_a_status_change_racing_another_on_the_sqlite_default_is_checked_against_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(
        [BIN / "alembic", "-c", ROOT / "alembic.ini", "upgrade", "head"],
        cwd=tmp_path,
        env=clean_env(),
        check=True,
        capture_output=True,
    )
    monkeypatch.chdir(tmp_path)
    raced: list[str] = []

    def another_write_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Another request cancels the order right before this one's conditional UPDATE runs.
        if statement.startswith("UPDATE orders SET status") and not raced:
            raced.append(statement)
            with sqlite3.connect(tmp_path / "orders.db") as other:
                other.execute("UPDATE orders SET status = 'CANCELED', version = version + 1")

    async with serving(Settings.from_env({})) as client:
        email = new_email()
        await client.post("/register", json={"email": email, "password": PASSWORD})
        tokens = (await client.post("/token", data={"username": email, "password": PASSWORD})).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        order = await client.post(
            "/orders", json={"items": [{"name": "tea", "quantity": 1, "price": "3.10"}]}, headers=headers
        )
        path = f"/orders/{order.json()['id']}"
        await processed_in_process(client, path, headers)
        event.listen(Engine, "before_cursor_execute", another_write_first)
        try:
            patched = await client.patch(path, json={"status": "PAID"}, headers=headers)
        finally:
            event.remove(Engine, "before_cursor_execute", another_write_first)

    assert raced
    assert patched.status_code == 409, patched.text
    assert "The order is CANCELED" in patched.json()["detail"]
    with sqlite3.connect(tmp_path / "orders.db") as database:
        assert database.execute("SELECT status FROM orders").fetchall() == [("CANCELED",)]


def test_a_failed_upgrade_on_the_sqlite_default_leaves_nothing_behind(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "orders.db") as database:
        database.execute("CREATE TABLE outbox (id INTEGER)")  # the last migration will fail on it

    failed = subprocess.run(
        [BIN / "alembic", "-c", ROOT / "alembic.ini", "upgrade", "head"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        check=False,
    )

    assert failed.returncode != 0
    with sqlite3.connect(tmp_path / "orders.db") as database:
        tables = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"outbox"}  # one transaction: the migrations before the failing one were rolled back


def test_migrations_in_production_refuse_the_defaults_as_the_service_does(tmp_path: Path) -> None:
    refused = subprocess.run(
        [BIN / "alembic", "-c", ROOT / "alembic.ini", "upgrade", "head"],
        cwd=tmp_path,
        env=clean_env(APP_ENV="production"),
        capture_output=True,
        text=True,
        check=False,
    )

    assert refused.returncode != 0
    assert "APP_ENV=production refuses to start: DATABASE_URL must be set" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "orders.db").exists()


def dev_server(database: Path, port: int) -> subprocess.Popen[str]:
    """`just dev`: ``python -m app.dev`` on the embedded default, its SQLite file at ``database``."""
    return subprocess.Popen(
        [BIN / "python", "-m", "app.dev"],
        cwd=ROOT,
        env=clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{database}", PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its granian worker too is stopped with the group
    )


def test_just_dev_migrates_the_embedded_default_then_serves_it(tmp_path: Path) -> None:
    port = free_port()
    server = dev_server(tmp_path / "orders.db", port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 60
            while server.poll() is None and time.monotonic() < deadline:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            registered = http.post("/register", json={"email": new_email(), "password": PASSWORD})
        assert registered.status_code == 201, registered.text  # the schema is there: the migration ran
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_just_dev_serves_nothing_when_the_migration_fails(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "orders.db") as database:
        database.execute("CREATE TABLE outbox (id INTEGER)")  # the last migration will fail on it

    server = dev_server(tmp_path / "orders.db", free_port())
    _, errors = server.communicate(timeout=60)

    assert server.returncode != 0
    assert "the migration failed" in errors
    assert "Starting granian" not in errors


@contextmanager
def production_api(database_url: str, **settings: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`just serve`: ``python -m app.serve`` (granian, two workers) with production settings."""
    port = free_port()
    env = production_api_env(port, database_url, **settings)
    server = subprocess.Popen(
        [BIN / "python", "-m", "app.serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(
            base_url, server, lambda: server.stderr.read().decode() if server.stderr else "", within=30
        )
        yield base_url, server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=60)
        forget_redis_keys(env["REDIS_KEY_PREFIX"])


@pytest.fixture
def granian(database_url: str) -> Iterator[str]:
    with production_api(database_url, AUTH_RATE_LIMIT="6/minute") as (base_url, _):
        yield base_url


def http_order(base_url: str, headers: dict[str, str]) -> str:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        response = http.post(
            "/orders", json={"items": [{"name": "tea", "quantity": 1, "price": "2.00"}]}, headers=headers
        )
    assert response.status_code == 201
    return str(response.json()["id"])


def test_granian_with_two_workers_shares_cache_logout_and_limits(granian: str) -> None:
    email = new_email()

    def fresh_connection() -> httpx.Client:  # a new connection may land on either worker
        return httpx.Client(base_url=granian, timeout=10)

    with fresh_connection() as http:
        assert http.post("/register", json={"email": email, "password": PASSWORD}).status_code == 201
        tokens = http.post("/token", data={"username": email, "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    for _ in range(6):
        with fresh_connection() as http:
            assert http.get("/users/me", headers=headers).status_code == 200

    order = http_order(granian, headers)
    with fresh_connection() as http:
        assert http.patch(f"/orders/{order}", json={"status": "PAID"}, headers=headers).status_code == 200
    for _ in range(6):  # whichever worker answers, its cache was refreshed by the write
        with fresh_connection() as http:
            assert http.get(f"/orders/{order}", headers=headers).json()["status"] == "PAID"

    with fresh_connection() as http:
        assert http.post("/logout", headers=headers).status_code == 204
    for _ in range(10):
        with fresh_connection() as http:
            assert http.get("/users/me", headers=headers).status_code == 401

    statuses = []
    for _ in range(6):
        with fresh_connection() as http:
            statuses.append(http.post("/token", data={"username": email, "password": "wrong"}).status_code)
    # /register and /token above used 2 of the 6 allowed per minute, whichever worker counted them
    assert statuses == [401, 401, 401, 401, 429, 429]


def test_shutdown_lets_requests_in_flight_finish(database_url: str) -> None:
    # A login takes about a second of hashing: it is still in flight when SIGTERM arrives.
    slow_hashing = {"ARGON2_TIME_COST": "6", "ARGON2_MEMORY_COST_KIB": "65536"}
    with production_api(database_url, **slow_hashing) as (base_url, server):
        email = new_email()
        with httpx.Client(base_url=base_url, timeout=60) as http:
            assert http.post("/register", json={"email": email, "password": PASSWORD}).status_code == 201
        with concurrent.futures.ThreadPoolExecutor() as pool:
            login = pool.submit(
                httpx.post, f"{base_url}/token", data={"username": email, "password": PASSWORD}, timeout=60
            )
            time.sleep(0.3)
            server.send_signal(signal.SIGTERM)
            assert login.result().status_code == 200
        assert server.wait(timeout=30) == 0
        errors = server.stderr.read().decode() if server.stderr else ""
    assert "Traceback" not in errors
    lines = [json.loads(line) for line in errors.splitlines()]  # one JSON object a line, granian's included
    assert any(line["logger"].startswith("_granian") for line in lines)
    assert [line["event"] for line in lines].count("publisher closed") == 2  # each worker closed its own


async def test_admins_are_created_by_the_cli(database_url: str, settings: Settings) -> None:
    email = new_email()
    env = clean_env(
        DATABASE_URL=database_url, ADMIN_PASSWORD=PASSWORD, ARGON2_MEMORY_COST_KIB="8", ARGON2_PARALLELISM="1"
    )
    created = subprocess.run(
        [BIN / "litestar", "--app", "app.asgi:app", "users", "create-admin", email],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    assert f"admin {email} created" in created.stdout

    again = subprocess.run(
        [BIN / "litestar", "--app", "app.asgi:app", "users", "create-admin", email],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode != 0
    assert "already exists" in again.stderr

    async with serving(settings) as client:
        tokens = (await client.post("/token", data={"username": email, "password": PASSWORD})).json()
        me = await client.get("/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["role"] == "admin"


def test_the_models_and_the_migrations_agree(database_url: str) -> None:
    checked = subprocess.run(
        [BIN / "alembic", "check"],
        cwd=ROOT,
        env=clean_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
