"""The worker process: ``celery -A app.worker worker``. Flower watches it: ``celery -A app.worker flower``."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging

from app.config import Settings
from app.lib.logging import configure_logging
from app.worker.config import create_celery

settings = Settings.from_env()
celery = create_celery(settings)


@setup_logging.connect
def _logging(**_: Any) -> None:
    """Our structured logging instead of Celery's own, in the worker (Flower logs through tornado)."""
    configure_logging(level=settings.log_level, as_json=settings.log_as_json)
