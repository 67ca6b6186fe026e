"""A request body that refuses unknown fields says so in the served document, and only that differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, post
from litestar.dto import DataclassDTO, DTOConfig, DTOData
from litestar.openapi import OpenAPIConfig
from litestar.params import JSONBody
from litestar.plugins import PluginProtocol
from litestar.testing import TestClient

from app.docs.openapi import StrictStructSchemaPlugin
from app.docs.pages import docs_router


class Line(msgspec.Struct, forbid_unknown_fields=True):
    sku: str


class Note(msgspec.Struct):
    text: str


class Basket(msgspec.Struct, forbid_unknown_fields=True):
    lines: list[Line]
    note: Note | None = None


class Lenient(msgspec.Struct):
    line: Line


@dataclass
class Profile:
    name: str
    age: int


class ProfilePatch(DataclassDTO[Profile]):
    config = DTOConfig(include={"name"}, partial=True, forbid_unknown_fields=True)
    __schema_name__ = "ProfilePatch"


@post("/baskets")
async def add_basket(data: JSONBody[Basket]) -> None:
    return None


@post("/lenient")
async def add_lenient(data: JSONBody[Lenient]) -> None:
    return None


@post("/profile", dto=ProfilePatch, return_dto=None)
async def patch_profile(data: JSONBody[DTOData[Profile]]) -> None:
    return None


def served_schemas(plugins: list[PluginProtocol]) -> dict[str, Any]:
    app = Litestar(
        [add_basket, add_lenient, patch_profile],
        plugins=plugins,
        openapi_config=OpenAPIConfig("test", "1", openapi_router=docs_router()),
    )
    with TestClient(app) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    return dict(response.json()["components"]["schemas"])


def test_strict_structs_and_dtos_allow_no_other_properties() -> None:
    schemas = served_schemas([StrictStructSchemaPlugin()])

    for strict in ("Basket", "Line", "ProfilePatch"):  # a body, a Struct within bodies, a DTO's body
        assert schemas[strict]["additionalProperties"] is False, strict
    for lenient in ("Note", "Lenient"):
        assert "additionalProperties" not in schemas[lenient], lenient


def test_the_rest_of_each_schema_is_litestars() -> None:
    schemas = served_schemas([StrictStructSchemaPlugin()])
    litestars = served_schemas([])

    assert schemas.keys() == litestars.keys()
    for name, schema in schemas.items():
        assert {key: value for key, value in schema.items() if key != "additionalProperties"} == litestars[
            name
        ], name


def test_a_second_request_serves_the_same_document() -> None:
    plugin = StrictStructSchemaPlugin()
    app = Litestar(
        [add_basket], plugins=[plugin], openapi_config=OpenAPIConfig("t", "1", openapi_router=docs_router())
    )
    with TestClient(app) as client:
        first = client.get("/schema/openapi.json").json()
        assert client.get("/schema/openapi.json").json() == first
        assert client.get("/schema/swagger").status_code == 200
    assert app.openapi_schema.components.schemas["Basket"].additional_properties is False
