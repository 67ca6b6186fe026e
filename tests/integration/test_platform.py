"""What every route shares: errors, CORS, request ids, health, the OpenAPI document and the logs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient, Response

from app.config import Settings
from tests.proxy import proxy_to
from tests.support import (
    PASSWORD,
    POSTGRES_URL,
    UNREACHABLE_REDIS_URL,
    eventually,
    register,
    same_stores,
    serving,
    signed_up,
)

Client = AsyncClient
ORIGIN = "https://shop.example.com"


async def test_unknown_path_is_a_problem_document(client: Client) -> None:
    response = await client.get("/no/such/path")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


async def test_wrong_method_is_405(client: Client) -> None:
    response = await client.delete("/register")
    assert response.status_code == 405
    assert response.json()["status"] == 405


async def test_malformed_json_is_a_client_error(client: Client) -> None:
    response = await client.post(
        "/register", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["status"] == 400


# A database without the service's tables: every query fails as a bug would (an unreachable one is a 503).
UNMIGRATED_DATABASE_URL = POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://")


async def test_an_unexpected_database_error_is_a_500_that_leaks_nothing(settings: Settings) -> None:
    broken = same_stores(settings, database_url=UNMIGRATED_DATABASE_URL)
    async with serving(broken) as client:
        response = await client.post("/register", json={"email": "a@example.com", "password": PASSWORD})

    assert response.status_code == 500
    assert response.json() == {
        "status": 500,
        "title": "Internal Server Error",
        "detail": "The server could not complete the request",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Expected a value, got none"),
        (b"null", "Expected `object`, got `null`"),
        (b"[]", "Expected `object`, got `array`"),
    ],
)
async def test_a_body_that_is_no_object_is_422_naming_the_body(
    client: Client, body: bytes, message: str
) -> None:
    response = await client.post("/register", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "body", "message": message}]


async def test_an_oversized_body_is_413(client: Client) -> None:
    response = await client.post(
        "/register",
        content=b'{"email": "' + b"a" * 2_000_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413


@pytest.fixture
async def cors_client(settings: Settings) -> Any:
    async with serving(same_stores(settings, cors_allowed_origins=(ORIGIN,))) as client:
        yield client


async def test_preflight_from_an_allowed_origin_is_answered(cors_client: Client) -> None:
    response = await cors_client.options(
        "/users/me",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )

    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


async def test_a_foreign_origin_gets_no_cors_headers(cors_client: Client) -> None:
    preflight = await cors_client.options(
        "/users/me", headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "GET"}
    )
    simple = await cors_client.get("/health", headers={"Origin": "https://evil.example.net"})
    refused = await cors_client.get("/users/me", headers={"Origin": "https://evil.example.net"})

    for response in (preflight, simple, refused):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]
    assert simple.status_code == 200
    assert refused.status_code == 401


@pytest.mark.parametrize(
    ("origin", "method", "reason"),
    [("https://evil.example.net", "GET", "Origin"), (ORIGIN, "PUT", "method")],
)
async def test_a_refused_preflight_is_a_problem_document(
    cors_client: Client, origin: str, method: str, reason: str
) -> None:
    response = await cors_client.options(
        "/orders", headers={"Origin": origin, "Access-Control-Request-Method": method}
    )

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json() == {"status": 400, "title": "Bad Request", "detail": f"Disallowed CORS {reason}"}
    assert len(response.headers["x-request-id"]) == 32


async def test_a_simple_request_from_an_allowed_origin_may_read_the_api_headers(cors_client: Client) -> None:
    response = await cors_client.get("/health", headers={"Origin": ORIGIN})

    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in response.headers["access-control-expose-headers"]


async def test_every_response_carries_a_request_id(client: Client) -> None:
    ok = await client.get("/health")
    unauthorized = await client.get("/users/me")
    echoed = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    refused = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})

    assert len(ok.headers["x-request-id"]) == 32
    assert len(unauthorized.headers["x-request-id"]) == 32
    assert echoed.headers["x-request-id"] == "abc-123"
    assert refused.headers["x-request-id"] != "bad id\twith spaces"


async def test_liveness_touches_nothing(settings: Settings) -> None:
    nothing = same_stores(
        settings, database_url="postgresql+asyncpg://postgres@127.0.0.1:1/x", redis_url=UNREACHABLE_REDIS_URL
    )
    async with serving(nothing) as client:
        response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


ALL_OK = {"database": "ok", "redis": "ok", "rabbitmq": "ok"}
SETTING_OF = {"database": "database_url", "redis": "redis_url", "rabbitmq": "amqp_url"}


def states(response: Response) -> dict[str, str]:
    return {name: state["status"] for name, state in response.json()["dependencies"].items()}


async def readiness_reporting(client: Client, wanted: dict[str, str], within: float = 15.0) -> Response:
    """``/health/ready`` once it reports ``wanted``: its results may be a second old, and the publisher
    connects in the background after the app started."""
    response = await client.get("/health/ready")

    async def reports() -> bool:
        nonlocal response
        response = await client.get("/health/ready")
        return states(response) == wanted

    await eventually(reports, f"readiness to report {wanted}", within)
    return response


async def test_readiness_lists_each_dependency(client: Client) -> None:
    response = await readiness_reporting(client, ALL_OK)

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readiness_is_503_naming_the_failing_dependency(settings: Settings) -> None:
    async with serving(same_stores(settings, redis_url=UNREACHABLE_REDIS_URL)) as client:
        response = await readiness_reporting(client, {**ALL_OK, "redis": "failing"})

    assert response.status_code == 503


@pytest.mark.parametrize(
    ("failing", "unreachable"),
    [
        ("database", {"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/orders"}),
        ("rabbitmq", {"amqp_url": "amqp://guest:guest@127.0.0.1:1/"}),
    ],
)
async def test_readiness_is_503_naming_an_unreachable_database_or_broker(
    settings: Settings, failing: str, unreachable: dict[str, str]
) -> None:
    async with serving(same_stores(settings, **unreachable)) as client:
        response = await readiness_reporting(client, {**ALL_OK, failing: "failing"})

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["dependencies"][failing]["detail"]  # the kind of failure, e.g. ConnectionRefusedError


async def test_a_flood_of_readiness_probes_opens_no_connection(settings: Settings) -> None:
    with (
        proxy_to(settings.database_url) as database,
        proxy_to(settings.redis_url) as redis,
        proxy_to(settings.amqp_url) as rabbitmq,
    ):
        proxies = {"database": database, "redis": redis, "rabbitmq": rabbitmq}
        proxied = {
            SETTING_OF[name]: proxy.url(getattr(settings, SETTING_OF[name]))
            for name, proxy in proxies.items()
        }
        async with serving(same_stores(settings, **proxied)) as client:
            await readiness_reporting(client, ALL_OK)
            before = {name: proxy.accepted for name, proxy in proxies.items()}
            answers = await asyncio.gather(*(client.get("/health/ready") for _ in range(1000)))
            opened = {name: proxy.accepted - before[name] for name, proxy in proxies.items()}

    assert {response.status_code for response in answers} == {200}
    assert opened["rabbitmq"] == 0  # the publisher's connection is the probe
    # The probes share one ping a second, on the pools' connections; the outbox relay (PostgreSQL) and the
    # revocation sync (Redis) may hold the pooled one at that moment, so a second may be opened beside it.
    assert opened["database"] <= 1
    assert opened["redis"] <= 1


@pytest.mark.parametrize("dependency", sorted(SETTING_OF))
async def test_readiness_follows_a_dependency_that_goes_away_and_comes_back(
    settings: Settings, dependency: str
) -> None:
    setting = SETTING_OF[dependency]
    with proxy_to(getattr(settings, setting)) as proxy:
        async with serving(
            same_stores(settings, **{setting: proxy.url(getattr(settings, setting))})
        ) as client:
            await readiness_reporting(client, ALL_OK)
            proxy.cut()
            gone = await readiness_reporting(client, {**ALL_OK, dependency: "failing"})
            proxy.restore()
            # RabbitMQ's robust connection tries again every 5 s
            back = await readiness_reporting(client, ALL_OK, within=30)

    assert gone.status_code == 503
    assert back.status_code == 200


async def test_openapi_document_lets_a_client_log_in(client: Client) -> None:
    response = await client.get("/schema/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    schemes = document["components"]["securitySchemes"]
    flows = [scheme["flows"]["password"] for scheme in schemes.values() if scheme["type"] == "oauth2"]
    assert flows == [{"tokenUrl": "/token", "scopes": {}}]
    assert {"/register", "/token", "/token/refresh", "/logout", "/users/me"} <= set(document["paths"])
    assert "password_hash" not in response.text


async def test_openapi_document_describes_what_the_service_answers(client: Client) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    responses = {
        f"{method.upper()} {path} {status}": response
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
    }

    # an oauth2 scheme carries its flows only: the fields of apiKey and http schemes make the document invalid
    assert [set(scheme) for scheme in document["components"]["securitySchemes"].values()] == [
        {"type", "description", "flows"}
    ]
    # every error is documented as what it is: a problem document (400 for unparsable input included)
    errors = {
        name: response
        for name, response in responses.items()
        # the readiness 503 is a report, not an error
        if name.rsplit(" ", 1)[1] >= "400" and not name.startswith("GET /health/ready")
    }
    assert "POST /orders 400" in errors
    for name, response in errors.items():
        assert list(response["content"]) == ["application/problem+json"], name
        # the token endpoints' problem documents also carry OAuth2's error fields
        schema = "OAuth2ProblemDetails" if name.startswith("POST /token") else "ProblemDetails"
        assert response["content"]["application/problem+json"]["schema"] == {
            "$ref": f"#/components/schemas/{schema}"
        }, name
    # OpenAPI requires a header to have a schema
    headers = [header for response in responses.values() for header in response.get("headers", {}).values()]
    assert headers
    assert all("schema" in header for header in headers)


@pytest.mark.parametrize("path", ["/schema/swagger", "/schema/redoc", "/schema/scalar"])
async def test_documentation_pages_are_served(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]


async def test_docs_leads_to_swagger_ui(client: Client) -> None:
    response = await client.get("/docs", follow_redirects=False)
    assert response.status_code in (301, 302, 307, 308)
    assert response.headers["location"] == "/schema/swagger"


async def test_logs_carry_request_ids_but_never_passwords_or_tokens(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    async with serving(settings) as client:  # logging set up while stderr is captured
        account = await signed_up(client)
        await client.get("/users/me", headers=account.headers)
        await register(client, password="another secret password")

    logged = capsys.readouterr().err
    assert "request_id=" in logged
    assert account.password not in logged
    assert "another secret password" not in logged
    assert account.tokens["access_token"] not in logged
    assert account.tokens["refresh_token"] not in logged


async def test_the_traceback_of_an_unexpected_error_shows_no_passwords(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    assert settings.log_format == "console"  # the development default, where tracebacks are pretty
    broken = same_stores(settings, database_url=UNMIGRATED_DATABASE_URL)
    async with serving(broken) as client:
        response = await client.post("/token", data={"username": "ada@example.com", "password": PASSWORD})

    assert response.status_code == 500
    logged = capsys.readouterr().err
    assert "Traceback" in logged
    assert PASSWORD not in logged  # a traceback with each frame's local variables would show the form
