"""The orders service: one codebase, three process roles (API, event consumer, Celery worker)."""
