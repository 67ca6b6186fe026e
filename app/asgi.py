"""What granian and the Litestar CLI load (``app.asgi:app``): the API app, built from the environment."""

from app.api import create_app_from_environment

app = create_app_from_environment()
