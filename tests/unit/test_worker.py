"""The Celery tasks' retry policy."""

from __future__ import annotations

import pytest
from celery import Task
from sqlalchemy.exc import OperationalError

from app.worker.tasks import process_order_task, process_orders_task


@pytest.mark.parametrize("task", [process_orders_task, process_order_task])
def test_transient_errors_are_retried_with_backoff_for_as_long_as_they_last(task: Task) -> None:  # type: ignore[type-arg]
    # A task that stopped retrying would fail and be acknowledged: its orders would never be processed.
    assert task.max_retries is None
    assert issubclass(OperationalError, task.autoretry_for)
    assert task.retry_backoff
    assert task.retry_backoff_max == 60
