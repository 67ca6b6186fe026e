"""The administration commands close their database connections when they end, rather than leave them to be
dropped with the event loop (asyncpg warns of each, and PostgreSQL logs an unexpected EOF)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import PASSWORD, ROOT, new_email

LITESTAR = Path(sys.executable).parent / "litestar"
ADMIN = new_email()


def run(database_url: str, *command: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": database_url,
        "ADMIN_PASSWORD": PASSWORD,
        "ARGON2_MEMORY_COST_KIB": "8",
        "ARGON2_PARALLELISM": "1",
        "PYTHONWARNINGS": "always::ResourceWarning",  # shown: Python hides them by default
    }
    return subprocess.run(
        [LITESTAR, "--app", "app.asgi:app", *command],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    "commands",
    [
        pytest.param([["users", "create-admin", ADMIN], ["users", "promote", ADMIN]], id="users"),
        pytest.param([["events", "status"]], id="events"),
    ],
)
def test_a_command_leaves_no_connection_unclosed(database_url: str, commands: list[list[str]]) -> None:
    for command in commands:
        finished = run(database_url, *command)

        assert finished.returncode == 0, finished.stderr
        assert "ResourceWarning" not in finished.stderr, finished.stderr
