"""The Celery task's retry policy."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from app.worker.tasks import process_order


def test_transient_errors_are_retried_with_backoff_for_as_long_as_they_last() -> None:
    # A task that stopped retrying would fail and be acknowledged: its order would never be processed.
    assert process_order.max_retries is None
    assert issubclass(OperationalError, process_order.autoretry_for)
    assert process_order.retry_backoff
    assert process_order.retry_backoff_max == 60
