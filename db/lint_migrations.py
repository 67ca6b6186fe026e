"""Lint each migration's SQL with squawk: `uv run python db/lint_migrations.py [-c alembic.ini] [REVISION]...`

A revision's SQL is what `alembic upgrade <previous>:<revision> --sql` prints (offline mode: nothing
connects), linted on its own, as it will run: against a database that has the earlier revisions and is in
use. squawk's settings are db/squawk.toml; a migration that must do what a rule forbids names the rule in a
module-level `squawk_exclude = ("rule", ...)`, with the reason in a comment.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory

ROOT = Path(__file__).resolve().parent.parent
SQUAWK_CONFIG = ROOT / "db" / "squawk.toml"
SQUAWK = Path(sysconfig.get_path("scripts")) / "squawk"  # installed by the dev group (squawk-cli)
OFFLINE_URL = "postgresql+asyncpg://offline/orders"  # the dialect alembic writes SQL for; never connected to


def alembic_config(path: Path, output: io.StringIO | None = None) -> Config:
    attributes = {"database_url": OFFLINE_URL, "configure_logger": False}
    return Config(path, output_buffer=output, attributes=attributes)


def migrations(config_path: Path) -> list[Script]:
    """Every revision, oldest first; a merge joins branches and holds no statement of its own."""
    scripts = ScriptDirectory.from_config(alembic_config(config_path)).walk_revisions()
    return [script for script in reversed(list(scripts)) if not script.is_merge_point]


def offline_sql(config_path: Path, script: Script) -> str:
    output = io.StringIO()
    previous = script.down_revision or "base"
    command.upgrade(alembic_config(config_path, output), f"{previous}:{script.revision}", sql=True)
    return output.getvalue()


def excluded_rules(script: Script) -> list[str]:
    own: Sequence[str] = getattr(script.module, "squawk_exclude", ())
    if not own:
        return []
    # squawk's --exclude replaces the config file's excluded_rules rather than adding to them.
    shared: list[str] = tomllib.loads(SQUAWK_CONFIG.read_text())["excluded_rules"]
    return [*shared, *own]


def lint(config_path: Path, script: Script) -> subprocess.CompletedProcess[str]:
    """squawk's report on one migration's SQL (exit code 1 on a finding), named after the migration's file."""
    rules = excluded_rules(script)
    return subprocess.run(  # noqa: S603 - squawk from this environment, fed the SQL alembic wrote
        [
            str(SQUAWK),
            f"--config={SQUAWK_CONFIG}",
            "--reporter=gcc",
            f"--stdin-filepath={Path(script.path).stem}.sql",
            *([f"--exclude={','.join(rules)}"] if rules else []),
        ],
        input=offline_sql(config_path, script),
        capture_output=True,
        text=True,
        check=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-c", "--config", type=Path, default=ROOT / "alembic.ini", help="alembic's config file"
    )
    parser.add_argument("revisions", nargs="*", help="the revisions to lint (default: every one)")
    args = parser.parse_args(argv)
    scripts = [s for s in migrations(args.config) if not args.revisions or s.revision in args.revisions]
    failed = 0
    for script in scripts:
        result = lint(args.config, script)
        sys.stdout.write(result.stdout + result.stderr)
        failed += result.returncode != 0
    print(f"squawk: {len(scripts)} migrations linted, {failed} with findings")
    return 1 if failed or not scripts else 0


if __name__ == "__main__":
    sys.exit(main())
