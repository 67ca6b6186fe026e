"""The worker process: ``celery -A app.worker worker``, which finds the Celery app here as ``celery``; the app
and its tasks are in app.worker.tasks. Flower watches it: ``celery -A app.worker flower``."""

from app.worker.tasks import celery

__all__ = ["celery"]
