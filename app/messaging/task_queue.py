"""The Celery task queue between the consumer and the worker, as both configure it.

Apart from app.messaging.broker, which the API imports: the API sends no task, and importing Celery would
cost every API worker start-up time and memory.
"""

from __future__ import annotations

from celery import Celery

from app.config import Settings


def celery_app(settings: Settings) -> Celery:
    """The Celery app of the task queue as a producer sees it: the consumer sends tasks with it, and the
    worker (app.worker.tasks) adds its own options to it, so that both name the same broker and queue.

    A task is published with RabbitMQ's confirm (the producer blocks until then) and a refused publish is
    retried before the send fails.

    The queue is a quorum queue, replicated on a cluster's nodes (a classic one lives and dies with one
    node), bound to a topic exchange, both named after it. With a quorum queue, Celery delays a task (the
    worker's retries with backoff) in RabbitMQ, in its ``celery_delayed_*`` queues, which deliver it through
    a binding that a direct exchange cannot take; through a direct one, the task would wait unacknowledged
    in a worker until its time.
    """
    celery = Celery("orders", broker=settings.celery_broker)
    celery.conf.update(
        task_default_queue=settings.celery_queue,
        task_default_queue_type="quorum",
        task_default_exchange_type="topic",
        task_serializer="json",
        broker_transport_options={"confirm_publish": True},
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 5,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 3,
        },
        enable_utc=True,
        timezone="UTC",
    )
    return celery
