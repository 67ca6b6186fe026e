"""Connections to PostgreSQL and Redis, and the stores built on them."""
