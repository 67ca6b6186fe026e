"""The Celery tasks' retry policy."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.exc import OperationalError

from app.worker.tasks import process_orders_task


class RetryPolicy(Protocol):
    """The options a task's decorator sets on it (celery-types declares max_retries alone)."""

    max_retries: int | None
    autoretry_for: tuple[type[Exception], ...]
    retry_backoff: bool | int
    retry_backoff_max: int


def test_transient_errors_are_retried_with_backoff_for_as_long_as_they_last() -> None:
    task: RetryPolicy = process_orders_task
    # A task that stopped retrying would fail and be acknowledged: its orders would never be processed.
    assert task.max_retries is None
    assert issubclass(OperationalError, task.autoretry_for)
    assert task.retry_backoff
    assert task.retry_backoff_max == 60
