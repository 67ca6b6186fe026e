"""CORS lets a script on an allowed origin use the whole API: every method a route answers (and no other), and
every response header the API documents, which a browser otherwise hides from the script."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient

from app.api import create_app
from app.config import Settings
from tests.support import same_stores, serving

ORIGIN = "https://app.example.com"


def documented_response_headers(document: dict[str, Any]) -> set[str]:
    """The headers the OpenAPI document declares on any response of any operation, lowercased."""
    return {
        name.lower()
        for path in document["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict)
        for response in operation.get("responses", {}).values()
        for name in response.get("headers", {})
    }


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


async def preflight(client: AsyncClient, path: str, method: str) -> Any:
    return await client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": method})


async def test_every_header_the_openapi_document_declares_is_exposed(settings: Settings) -> None:
    async with serving(same_stores(settings, cors_allowed_origins=(ORIGIN,))) as client:
        document = (await client.get("/schema/openapi.json")).json()
        response = await client.get("/health", headers={"Origin": ORIGIN})

    documented = documented_response_headers(document)
    assert {"link", "x-next-cursor", "location", "idempotent-replayed", "retry-after"} <= documented
    assert documented <= listed(response.headers["access-control-expose-headers"])


async def test_cors_allows_the_methods_the_routes_answer_and_no_other(settings: Settings) -> None:
    cors = same_stores(settings, cors_allowed_origins=(ORIGIN,))
    answered = {method for route in create_app(cors).routes for method in getattr(route, "methods", ())}
    async with serving(cors) as client:
        allowed = await preflight(client, "/orders", "PATCH")
        delete = await preflight(client, "/orders", "DELETE")

    assert listed(allowed.headers["access-control-allow-methods"]) == {method.lower() for method in answered}
    assert "DELETE" not in answered
    assert delete.status_code == 400
