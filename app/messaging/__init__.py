"""Events and tasks between the roles: outbox, RabbitMQ's topology and publishing, the Celery task queue."""
