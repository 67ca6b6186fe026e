"""What can be checked of the container setup without a container engine: the compose file and the
Containerfile agree with the code, the justfile and the settings."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.config import Settings
from app.observability.tracing import tracing_enabled
from app.serve import SHUTDOWN_GRACE_SECONDS

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE = yaml.safe_load((ROOT / "containers" / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONTAINERFILE = (ROOT / "containers" / "Containerfile").read_text()
JUSTFILE = (ROOT / "justfile").read_text()
ROLES = {
    "api": ["python", "-m", "app.serve"],
    "consumer": ["python", "-m", "app.consumer"],
    "worker": ["celery", "-A", "app.worker", "worker"],
    "flower": ["celery", "-A", "app.worker", "flower"],
    "migrate": ["alembic", "upgrade", "head"],
}


def test_the_stack_has_every_service() -> None:
    assert set(SERVICES) == {"postgres", "redis", "rabbitmq", "jaeger", *ROLES}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_role_runs_the_projects_own_command(role: str) -> None:
    command = SERVICES[role]["command"]
    assert command[: len(ROLES[role])] == ROLES[role]
    module = command[2] if command[1] in {"-m", "-A"} else None
    if module:
        assert importlib.util.find_spec(module) is not None, module


@pytest.mark.parametrize(
    ("recipe", "role"),
    [("serve", "api"), ("consumer", "consumer"), ("worker", "worker"), ("flower", "flower")],
)
def test_the_justfile_runs_the_same_commands(recipe: str, role: str) -> None:
    body = re.search(rf"^{recipe}\b[^:\n]*:.*\n((?:    .*\n)+)", JUSTFILE, re.MULTILINE)
    assert body is not None, recipe
    assert " ".join(ROLES[role]) in body.group(1)


def test_every_service_has_a_healthcheck_but_the_one_shot_migration() -> None:
    for name, service in SERVICES.items():
        assert ("healthcheck" in service) == (name != "migrate"), name
    assert SERVICES["migrate"]["restart"] == "no"


def test_roles_start_after_what_they_need() -> None:
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for role in ("api", "consumer", "worker"):
        assert SERVICES[role]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert SERVICES[role]["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
        assert SERVICES[role]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_ports_match_the_settings() -> None:
    defaults = Settings()
    assert SERVICES["api"]["ports"] == [f"8000-8009:{defaults.port}"]
    assert f"EXPOSE {defaults.port} {defaults.metrics_port}" in CONTAINERFILE
    assert f":{defaults.port}/health/ready" in str(SERVICES["api"]["healthcheck"]["test"])
    assert f":{defaults.consumer_metrics_port}/metrics" in str(SERVICES["consumer"]["healthcheck"]["test"])


def test_the_api_metrics_reach_the_compose_network_but_not_the_host() -> None:
    defaults = Settings()
    assert SERVICES["api"]["expose"] == [str(defaults.metrics_port)]
    published = [port.rsplit(":", 1)[-1] for port in SERVICES["api"]["ports"]]
    assert str(defaults.metrics_port) not in published
    assert "METRICS_PORT" not in SERVICES["api"]["environment"]  # the default, which the image exposes


def test_the_roles_environment_names_real_settings() -> None:
    settings = {name.upper() for name in Settings.__struct_fields__}
    for role in ROLES:
        # OTEL_* are OpenTelemetry's own variables, which its SDK reads (app.observability.tracing).
        ours = {name for name in SERVICES[role]["environment"] if not name.startswith("OTEL_")}
        assert ours <= settings, role
    production = SERVICES["api"]["environment"]
    assert production["APP_ENV"] == "production"
    assert {"DATABASE_URL", "REDIS_URL", "AMQP_URL", "JWT_SECRET"} <= set(production)


def test_tracing_is_off_unless_asked_for_and_then_goes_to_the_tracing_profiles_jaeger() -> None:
    def resolved(environment: dict[str, str], **host: str) -> dict[str, str]:
        """The values compose gives ``${NAME:-default}`` with ``host``'s variables."""
        return {
            name: re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: host.get(m[1], m[2]), value)
            for name, value in environment.items()
        }

    jaeger = SERVICES["jaeger"]
    assert jaeger["profiles"] == ["tracing"]  # `up` alone doesn't start it
    for role in ("api", "consumer", "worker"):
        environment = SERVICES[role]["environment"]
        assert not tracing_enabled(resolved(environment))
        traced = resolved(environment, OTEL_TRACES_EXPORTER="otlp")
        assert tracing_enabled(traced)
        endpoint = urlsplit(traced["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, str(endpoint.port)) == ("jaeger", "4318"), role  # OTLP over HTTP
    assert "4318" in jaeger["expose"]


def test_the_image_is_multi_stage_non_root_and_without_build_tools() -> None:
    stages = re.split(r"^FROM ", CONTAINERFILE, flags=re.MULTILINE)[1:]
    assert len(stages) == 2
    final = stages[-1]
    assert re.search(r"^USER (?!root)\w+", final, re.MULTILINE)
    assert "apt-get" not in final
    assert "/uv" not in final  # uv stays in the build stage


def test_the_containerfile_copies_what_exists_and_runs_the_api() -> None:
    for source in copied():
        assert (ROOT / source).exists(), source
    cmd = re.search(r"^CMD (\[.*\])$", CONTAINERFILE, re.MULTILINE)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == ROLES["api"]


def test_the_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split("\n")
    rules = [line for line in ignored if line and not line.startswith("#")]
    assert rules[0] == "*"  # no .venv, .env, orders.db or .git of the host in the build context
    assert {f"!{source}" for source in copied()} == {rule for rule in rules if rule.startswith("!")}


def test_roles_get_longer_to_stop_than_the_api_lets_requests_finish() -> None:
    for role in ("api", "consumer", "worker"):
        grace = SERVICES[role]["stop_grace_period"]
        assert grace.endswith("s")
        assert int(grace.removesuffix("s")) > SHUTDOWN_GRACE_SECONDS, role


def copied() -> list[str]:
    """The sources of the Containerfile's COPY lines that take files from the build context."""
    sources = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", CONTAINERFILE, re.MULTILINE):
        *from_context, _ = shlex.split(line)
        sources += from_context
    return sources
