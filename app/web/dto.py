"""Litestar DTOs of the ORM models, made to answer and document like the service's msgspec Structs."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from typing import Any, TypeVar

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyDTO
from litestar.dto.data_structures import DTOFieldDefinition
from litestar.exceptions import SerializationException, ValidationException
from litestar.types import Empty
from sqlalchemy.orm import DeclarativeBase

ModelT = TypeVar("ModelT", bound=DeclarativeBase)


class ResponseDTO(SQLAlchemyDTO[ModelT]):
    """A model as a response: every field is always there, so the document lists each as required.

    The columns' defaults (a generated id, a timestamp) matter to an INSERT, not to a response; kept, they
    would make the fields optional in the document and in the clients generated from it."""

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[DeclarativeBase]
    ) -> Generator[DTOFieldDefinition, None, None]:
        for definition in super().generate_field_definitions(model_type):
            yield replace(definition, default=Empty, default_factory=None)


class BodyDTO(SQLAlchemyDTO[ModelT]):
    """A model as a request body whose invalid fields answer 422, each named, as a Struct body's do.

    Litestar reports a DTO body that msgspec refuses as a 400 with msgspec's message; here a body that is
    JSON but not a valid one goes through validation, like a Struct's, and only unreadable JSON is a 400."""

    def decode_bytes(self, value: bytes) -> Any:
        try:
            return super().decode_bytes(value)
        except SerializationException as exc:
            if not isinstance(invalid := exc.__cause__, msgspec.ValidationError):
                raise
            # msgspec names where the value failed: "Invalid enum value 'LOST' - at `$.status`".
            message, at, path = str(invalid).partition(" - at `$.")
            key = path.removesuffix("`") if at else "data"  # "data": the body itself, as Litestar names it
            raise ValidationException(extra=[{"message": message, "key": key, "source": "body"}]) from exc
