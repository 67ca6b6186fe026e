"""Every request the OpenAPI document describes by its examples succeeds as sent.

Swagger UI's "Try it out" fills a body from the document: the body's own example if it has one, else each
property's example (or its enum's first value, or its minimum). ``sample`` builds the same body, and a fresh
account walks the whole flow with nothing else but the ids and tokens the answers hand back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import AsyncClient

from tests.support import bearer, serving, settings_for

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@pytest.fixture
async def fresh_client(own_database: str) -> AsyncIterator[AsyncClient]:
    """The examples name one account: a database of the test's own has not seen it yet."""
    async with serving(settings_for(own_database)) as client:
        yield client


@pytest.fixture
async def document(fresh_client: AsyncClient) -> dict[str, Any]:
    return dict((await fresh_client.get("/schema/openapi.json")).json())


def sample(schema: dict[str, Any], document: dict[str, Any]) -> Any:
    """The value Swagger UI fills in for ``schema``."""
    if "$ref" in schema:
        return sample(_resolve(schema["$ref"], document), document)
    if combined := schema.get("allOf") or schema.get("oneOf") or schema.get("anyOf"):
        return schema["examples"][0] if schema.get("examples") else sample(combined[0], document)
    if given := schema.get("examples") or schema.get("enum") or ("default" in schema and [schema["default"]]):
        return given[0]
    kind = schema.get("type")
    if kind == "object":
        return {name: sample(value, document) for name, value in schema.get("properties", {}).items()}
    if kind == "array":
        return [sample(schema["items"], document)]
    return int(schema.get("minimum", 0)) if kind == "integer" else "string"


def _resolve(reference: str, document: dict[str, Any]) -> dict[str, Any]:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def body(document: dict[str, Any], method: str, path: str) -> tuple[str, Any]:
    content = document["paths"][path][method]["requestBody"]["content"]
    media_type = next(iter(content))
    return media_type, sample(content[media_type]["schema"], document)


async def send(
    client: AsyncClient,
    document: dict[str, Any],
    method: str,
    path: str,
    path_params: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """The operation's example body, to ``path`` with ``path_params`` filled in."""
    media_type, value = body(document, method, path)
    url = path.format(**(path_params or {}))
    if media_type == FORM:
        return await client.request(method, url, data=value, **kwargs)
    assert media_type == JSON
    return await client.request(method, url, json=value, **kwargs)


async def test_the_examples_walk_the_whole_flow(fresh_client: AsyncClient, document: dict[str, Any]) -> None:
    client = fresh_client
    registered = await send(client, document, "post", "/register")
    assert registered.status_code == 201, registered.text
    logged_in = await send(client, document, "post", "/token")
    assert logged_in.status_code == 200, logged_in.text
    tokens = logged_in.json()
    auth = bearer(tokens["access_token"])

    created = await send(client, document, "post", "/orders", headers=auth)
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    changed = await send(
        client, document, "patch", "/orders/{order_id}", path_params={"order_id": order_id}, headers=auth
    )
    assert changed.status_code == 200, changed.text
    read = await client.get(f"/orders/{order_id}", headers=auth)
    assert read.status_code == 200
    listed = await client.get("/orders", headers=auth)
    assert [order["id"] for order in listed.json()] == [order_id]

    # A refresh token has no example that could work: the one the login answered is what a person pastes.
    refreshed = await client.post("/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    logged_out = await client.post("/logout", headers=bearer(refreshed.json()["access_token"]))
    assert logged_out.status_code == 204


def test_every_request_body_has_an_example_or_examples_for_its_fields(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if "requestBody" not in operation or path == "/token/refresh":  # its token comes from /token
                continue
            _, value = body(document, method, path)
            assert "string" not in _strings(value), f"{method.upper()} {path} would send {value}"


def _strings(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _strings(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _strings(item)]
    return [value]
