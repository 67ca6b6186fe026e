"""The Celery application, configured so that a task is never lost between broker and worker."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app.config import Settings

PROCESS_ORDERS = "orders.process_orders"
"""The task: a batch of orders (see app.worker.tasks)."""
PROCESS_ORDER = "orders.process_order"
"""The task of one order, as releases before the batches sent it."""


def create_celery(settings: Settings) -> Celery:
    celery = Celery("orders", broker=settings.celery_broker, include=["app.worker.tasks"])
    celery.conf.update(
        task_default_queue=settings.celery_queue,
        task_queues=[Queue(settings.celery_queue, durable=True)],
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Acknowledge after the task ran, and hand it back if the worker process dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Each task is a batch of up to CONSUMER_BATCH_SIZE orders: one in hand per process beyond the one
        # running keeps every process busy.
        worker_prefetch_multiplier=2,
        # Processing waits on the database and Redis far more than it computes: more processes than CPUs.
        worker_concurrency=settings.worker_concurrency,
        # The producer waits for RabbitMQ's confirm, and retries a refused publish before giving up.
        broker_transport_options={"confirm_publish": True},
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 5,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 3,
        },
        broker_connection_retry_on_startup=True,
        # Task events cost RabbitMQ messages per task; Flower switches them on while it watches.
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    return celery
