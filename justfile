# Recipes for the orders service. Run them as `uv run just <recipe>`; `just --list` shows them all.
# A .env file, if present, is loaded into every recipe's environment (see .env.example).

set dotenv-load := true

export LITESTAR_APP := "app.asgi:app"

# List the recipes.
default:
    @just --list

# Install the locked dependencies (the dev group included).
install:
    uv sync --locked

# Apply the database migrations (alembic upgrade head on $DATABASE_URL).
migrate:
    uv run alembic upgrade head

# app/dev.py: one interpreter imports the libraries, once for the migration and every reload.
# Migrate, then serve the API with auto-reload on http://127.0.0.1:${PORT:-8000}.
dev:
    uv run python -m app.dev

# Serve the API in production mode: granian, $WORKERS workers on $PORT, graceful shutdown.
serve:
    APP_ENV=production uv run python -m app.serve

# Consume new_order events and dispatch them to the Celery worker.
consumer:
    uv run python -m app.consumer

# Run the Celery worker that processes orders ($WORKER_CONCURRENCY processes). Arguments go to Celery: a
# second worker on the same host needs a node name of its own, e.g. `just worker -n worker2@%h`.
worker *args:
    uv run celery -A app.worker worker --loglevel INFO {{args}}

# Watch the worker with Flower on http://127.0.0.1:5555.
flower:
    uv run celery -A app.worker flower --address=127.0.0.1 --port=5555

# Benchmark the service as production runs it and write bench/RESULTS.md (installs wrk if it is missing).
bench *args:
    @command -v wrk >/dev/null || apt-get install -y wrk || (echo "install wrk, the load generator" >&2; exit 1)
    uv run python bench/run.py {{args}}

# Create an admin account (password prompted, or taken from $ADMIN_PASSWORD).
create-admin email:
    uv run litestar users create-admin {{email}}

# Run the whole test suite (needs PostgreSQL, Redis and RabbitMQ; see README).
test *args:
    uv run pytest {{args}}

# The conformance tests alone: schemathesis and a generated client against the live API, abuse cases.
# CONFORMANCE_EXAMPLES (300) sets the cases per operation; -s shows schemathesis' report.
conformance *args:
    uv run pytest tests/conformance {{args}}

# mypy strict is set up in pyproject.toml; squawk's settings are db/squawk.toml.
# Lint and type-check app, tests, bench, db and cluster, and lint each migration's SQL with squawk.
lint:
    uv run ruff check app tests db bench cluster
    uv run ruff format --check app tests db bench cluster
    uv run mypy
    uv run python db/lint_migrations.py

# Format the code and apply safe lint fixes.
fmt:
    uv run ruff format app tests db bench cluster
    uv run ruff check --fix app tests db bench cluster

# Fetch the API docs' bundles (Swagger UI, Redoc, Scalar) at the versions pinned in app/docs/pages.py.
docs-assets:
    uv run python -m app.docs.refresh

# `up`, `status [--json]`, `kill NAME`, `start NAME`, `partition NAME [PEER...]`, `heal NAME`, `deploy`, `down`.
# A cluster of hosts on this machine, as network namespaces (root): up, status, kill, deploy... (see README).
cluster *args:
    @uv run python -m cluster {{args}}
