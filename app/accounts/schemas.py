"""What the accounts API reads and writes."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyDTOConfig

from app.accounts.models import User
from app.storage.db import STORABLE_TEXT
from app.web.dto import ResponseDTO
from app.web.errors import plain_pattern

EXAMPLE_EMAIL = "ada@example.com"
Email = Annotated[
    str,
    msgspec.Meta(
        pattern=plain_pattern(
            r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$", f"must be an email address, like {EXAMPLE_EMAIL}"
        ),
        max_length=254,
        description="An email address; stored and compared in lower case.",
        examples=[EXAMPLE_EMAIL],
    ),
]
EXAMPLE_PASSWORD = "correct horse battery"  # noqa: S105 - the README's walkthrough account
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=128, examples=[EXAMPLE_PASSWORD])]


class Registration(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class PasswordGrant(msgspec.Struct):
    """The OAuth2 password grant form. Other OAuth2 fields (client_id, ...) are accepted and ignored.

    An empty ``grant_type`` counts as absent, as the seed services' FastAPI form did: their clients send
    ``grant_type=&username=...`` (FastAPI's own documented example). The examples fill Swagger UI's form.
    """

    username: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=254,
            pattern=STORABLE_TEXT,
            description="The account's email.",
            examples=[EXAMPLE_EMAIL],
        ),
    ]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=128, examples=[EXAMPLE_PASSWORD])]
    grant_type: Annotated[
        Literal["password", ""],
        msgspec.Meta(description="`password`; empty or left out means the same.", examples=["password"]),
    ] = "password"
    scope: str = ""


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: Annotated[int, msgspec.Meta(description="Seconds until the access token expires.")]
    token_type: Literal["bearer"] = "bearer"  # noqa: S105


class UserRead(ResponseDTO[User]):
    """A user as the API shows it (``id``, ``email``, ``role``, ``created_at``), straight from the row; the
    password hash never leaves the service."""

    config = SQLAlchemyDTOConfig(exclude={"password_hash", "updated_at"})
    __schema_name__ = "UserRead"
