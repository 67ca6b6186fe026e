"""Each process role loads its own code and the shared code, never another role's: the consumer doesn't run
the worker's module (its settings, its Celery app), and the worker doesn't load the web app."""

from __future__ import annotations

import pytest

from tests.support import reported_by

# What each role's process loads at start: the consumer's module and the Celery app it sends tasks with; the
# worker's app, as `celery -A app.worker` finds it, with the modules a worker imports before it consumes.
CONSUMER = """
from app.config import Settings
from app.consumer.__main__ import Consumer
from app.messaging.task_queue import celery_app
celery_app(Settings.from_env()).producer_pool
"""
WORKER = """
from celery.app.utils import find_app
celery = find_app("app.worker")
celery.loader.import_default_modules()
celery.finalize()
assert "orders.process_orders" in celery.tasks
"""
WEB = ("app.asgi", "app.api", "app.serve", "app.dev")


def modules_loaded_by(code: str) -> list[str]:
    """The ``app`` modules a fresh interpreter has loaded once ``code`` ran, in a production environment."""
    report = "import json, sys; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'app')))"
    loaded: list[str] = reported_by(f"{code}\n{report}")
    return loaded


def other_roles(loaded: list[str], *roles: str) -> list[str]:
    return [
        name
        for name in loaded
        if name.endswith(".controller") or any(name == role or name.startswith(f"{role}.") for role in roles)
    ]


@pytest.mark.parametrize(
    ("code", "roles"),
    [
        pytest.param(CONSUMER, ("app.worker", *WEB), id="consumer"),
        pytest.param(WORKER, ("app.consumer", *WEB), id="worker"),
    ],
)
def test_a_role_loads_no_other_role(code: str, roles: tuple[str, ...]) -> None:
    loaded = modules_loaded_by(code)
    assert "app.orders.processing" in loaded  # the shared task contract: the check sees the role's imports
    assert other_roles(loaded, *roles) == []


def test_the_api_loads_neither_the_pipeline_roles_nor_the_task_queue() -> None:
    """The API sends no task: Celery (the task queue's module) would cost each granian worker memory."""
    loaded = modules_loaded_by("import sys, app.asgi\nassert 'celery' not in sys.modules, 'Celery loaded'")
    assert "app.api" in loaded
    assert [
        name for name in loaded if name.startswith(("app.worker", "app.consumer", "app.messaging.task_queue"))
    ] == []


def test_just_devs_main_process_loads_none_of_the_apps_modules() -> None:
    """Its granian workers are forked from it on every reload: a module of the app loaded there would be the
    workers' copy, as it was when `just dev` started, and the models' tables would be declared twice."""
    assert modules_loaded_by("import app.dev\napp.dev.preload()") == ["app", "app.dev"]
