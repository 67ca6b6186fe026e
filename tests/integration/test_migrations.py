"""The migrations are checked: squawk lints each one's SQL, and pytest-alembic's standard tests run them on a
database of their own (single head, upgrade from empty, models match migrations, down and up again)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.support import ROOT, empty_database

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]


@pytest.fixture(scope="session")
def empty_database_url() -> Iterator[str]:
    """A database of this run's own with no table in it, dropped at the end: pytest-alembic migrates it."""
    with empty_database() as url:
        yield url


@pytest.fixture
def alembic_config() -> Config:
    return Config(ROOT / "alembic.ini", attributes={"configure_logger": False})  # pytest's logging stays


@pytest.fixture
def alembic_engine(empty_database_url: str) -> Iterator[AsyncEngine]:
    """env.py migrates through this engine; each alembic command runs its own event loop, so no connection
    outlives one (NullPool)."""
    engine = create_async_engine(empty_database_url, poolclass=NullPool)
    yield engine
    asyncio.run(engine.dispose())


SCRIPTS = ScriptDirectory(str(ROOT / "db" / "migrations"))
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]


def lint(*revisions: str, config: Path = ROOT / "alembic.ini") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "db" / "lint_migrations.py"), "-c", str(config), *revisions],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("revision", REVISIONS)
def test_squawk_finds_nothing_in_the_migration(revision: str) -> None:
    result = lint(revision)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 migrations linted, 0 with findings" in result.stdout


INDEX_IN_A_TRANSACTION = """
    import sqlalchemy as sa
    from alembic import op

    revision = "9999"
    down_revision = "{head}"
    {exclude}

    def upgrade() -> None:
        op.add_column("orders", sa.Column("note", sa.String(length=16), nullable=True))
        op.create_index("ix_orders_total_price", "orders", ["total_price"])
"""


def migrations_with(tmp_path: Path, exclude: str = "") -> Path:
    """alembic.ini for a copy of the migrations plus one that builds an index on orders in the transaction
    (and adds a varchar column, which db/squawk.toml lets pass)."""
    shutil.copytree(
        ROOT / "db" / "migrations", tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    body = INDEX_IN_A_TRANSACTION.format(head=SCRIPTS.get_current_head(), exclude=exclude)
    (tmp_path / "migrations" / "versions" / "9999_index.py").write_text(textwrap.dedent(body))
    config = tmp_path / "alembic.ini"
    settings = {"script_location": tmp_path / "migrations", "prepend_sys_path": ROOT, "path_separator": "os"}
    config.write_text("[alembic]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    return config


def test_squawk_flags_an_index_built_on_an_existing_table_in_a_transaction(tmp_path: Path) -> None:
    result = lint("9999", config=migrations_with(tmp_path))
    assert result.returncode == 1
    assert "9999_index.sql" in result.stdout
    assert "require-concurrent-index-creation" in result.stdout
    assert "prefer-text-field" not in result.stdout


def test_a_migration_excludes_the_rules_it_names_as_well_as_the_shared_ones(tmp_path: Path) -> None:
    exclude = 'squawk_exclude = ("require-concurrent-index-creation",)  # the reason goes here'
    result = lint("9999", config=migrations_with(tmp_path, exclude))
    assert result.returncode == 0, result.stdout
