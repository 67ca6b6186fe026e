"""The OpenAPI document declares what middleware adds to responses and what the request schemas refuse."""

from __future__ import annotations

import re
from typing import Any

import pytest
from httpx import AsyncClient

UNLIMITED = {"GET /health", "GET /health/ready"}
PROBLEM = {"$ref": "#/components/schemas/ProblemDetails"}
OAUTH2_PROBLEM = {"$ref": "#/components/schemas/OAuth2ProblemDetails"}
TOKEN_ENDPOINTS = {"POST /token", "POST /token/refresh"}


def problem_schema(name: str) -> dict[str, str]:
    return OAUTH2_PROBLEM if name in TOKEN_ENDPOINTS else PROBLEM


@pytest.fixture
async def document(client: AsyncClient) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_every_response_names_its_request_id(document: dict[str, Any]) -> None:
    for name, operation in operations(document).items():
        for status, response in operation["responses"].items():
            header = response["headers"]["X-Request-ID"]
            assert header["required"], (name, status)
            assert header["schema"]["type"] == "string"


def test_rate_limited_operations_declare_the_window_and_when_to_retry(document: dict[str, Any]) -> None:
    limited = {name: op for name, op in operations(document).items() if name not in UNLIMITED}
    assert len(limited) == 11
    for name, operation in limited.items():
        responses = operation["responses"]
        assert responses["429"]["content"]["application/problem+json"]["schema"] == problem_schema(name), name
        assert responses["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
        for status, response in responses.items():
            headers = response["headers"]
            for header in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"):
                assert headers[header]["required"], (name, status, header)
            assert headers["RateLimit-Remaining"]["schema"] == {"type": "integer", "minimum": 0}
    for name in UNLIMITED:
        assert "429" not in operations(document)[name]["responses"]
        assert "RateLimit-Limit" not in operations(document)[name]["responses"]["200"]["headers"]


def test_placing_declares_the_idempotency_key_and_where_the_order_is(document: dict[str, Any]) -> None:
    place = operations(document)["POST /orders"]

    (key,) = [parameter for parameter in place["parameters"] if parameter["in"] == "header"]
    assert key["name"] == "Idempotency-Key"
    assert not key["required"]
    assert key["schema"]["maxLength"] == 255
    created = place["responses"]["201"]["headers"]
    assert created["Location"]["required"]
    assert not created["Idempotent-Replayed"]["required"]


@pytest.mark.parametrize("name", ["GET /orders", "GET /orders/user/{user_id}", "GET /orders/all"])
def test_pages_declare_their_bounds_filters_and_next_page(document: dict[str, Any], name: str) -> None:
    listing = operations(document)[name]

    headers = listing["responses"]["200"]["headers"]
    # Counted on a user's pages without a cursor only: every order's count would read them all.
    assert ("X-Total-Count" in headers) == (name != "GET /orders/all")
    assert not headers.get("X-Total-Count", {}).get("required")
    assert not headers["Link"]["required"]
    assert not headers["X-Next-Cursor"]["required"]
    bounds = {parameter["name"]: parameter["schema"] for parameter in listing["parameters"]}
    assert (bounds["limit"]["minimum"], bounds["limit"]["maximum"]) == (1, 100)
    assert (bounds["offset"]["minimum"], bounds["offset"]["maximum"]) == (0, 2**31 - 1)
    assert bounds["cursor"]["pattern"] == "^[A-Za-z0-9_-]{34}$"
    assert {"items": {"$ref": "#/components/schemas/OrderStatus"}, "type": "array"} in bounds["status"][
        "oneOf"
    ]
    for instant in ("created_after", "created_before"):
        assert {"type": "string", "format": "date-time"} in bounds[instant]["oneOf"]
    query = {parameter["name"] for parameter in listing["parameters"] if parameter["in"] == "query"}
    assert ("user_id" in query) == (name == "GET /orders/all")


def test_errors_are_problem_documents_and_400_is_only_an_unreadable_body(document: dict[str, Any]) -> None:
    for name, operation in operations(document).items():
        responses = operation["responses"]
        takes_a_body = "requestBody" in operation
        assert ("400" in responses) == takes_a_body, name
        assert ("413" in responses) == takes_a_body, name
        assert ("415" in responses) == takes_a_body, name
        for status, response in responses.items():
            if status.startswith("4"):
                assert response["content"] == {
                    "application/problem+json": {"schema": problem_schema(name)}
                }, (
                    name,
                    status,
                )


def test_bodies_that_refuse_unknown_fields_say_so(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    for strict in ("Registration", "RefreshRequest", "OrderCreate", "OrderItem", "OrderStatusUpdate"):
        assert schemas[strict]["additionalProperties"] is False, strict
    assert "additionalProperties" not in schemas["PasswordGrant"]  # other OAuth2 fields are ignored


def test_the_token_endpoints_errors_carry_oauth2_fields(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["OAuth2ProblemDetails"]

    assert {"status", "title", "detail", "errors", "error", "error_description"} <= set(schema["properties"])
    assert {"status", "title", "detail", "error", "error_description"} <= set(schema["required"])
    assert {"invalid_request", "invalid_grant", "unsupported_grant_type"} <= set(
        schema["properties"]["error"]["enum"]
    )


def test_the_login_form_is_prefilled_with_the_walkthrough_account(document: dict[str, Any]) -> None:
    form = document["components"]["schemas"]["PasswordGrant"]["properties"]

    assert form["username"]["examples"] == ["ada@example.com"]
    assert form["password"]["examples"] == ["correct horse battery"]
    assert form["grant_type"]["type"] == "string"
    assert form["grant_type"]["default"] == "password"
    assert "password" in form["grant_type"]["enum"]


def test_operation_ids_are_a_verb_and_what_it_acts_on_with_no_word_twice(document: dict[str, Any]) -> None:
    """Generated clients name their functions after operationIds: ``register``, ``createOrder``, not
    ``RegisterRegister`` or ``OrdersPlace``."""
    ids = [operation["operationId"] for operation in operations(document).values()]
    assert len(set(ids)) == len(ids)
    for operation_id in ids:
        assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", operation_id), f"{operation_id}: not lower camel case"
        words = [word.lower() for word in re.findall(r"[A-Z]?[a-z]+", operation_id)]
        assert len(set(words)) == len(words), f"{operation_id} repeats a word"
