"""The consumer process (``python -m app.consumer``): turns ``new_order`` events into Celery tasks."""
