"""The orders API, black-box over HTTP against PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from httpx import AsyncClient

from app.config import Settings
from tests.support import Account, login, order_body, place_order, register, same_stores, serving, signed_up

Client = AsyncClient


async def test_placing_an_order_computes_the_total_on_the_server(client: Client, alice: Account) -> None:
    body = {
        "items": [
            {"name": "Espresso beans", "quantity": 3, "price": "12.5"},
            {"name": "Filter papers", "quantity": 1, "price": 4},
        ]
    }
    response = await client.post("/orders/", json=body, headers=alice.headers)

    assert response.status_code == 201
    order = response.json()
    assert UUID(order["id"])
    assert order["user_id"] == alice.id
    assert order["total_price"] == "41.50"
    assert [item["price"] for item in order["items"]] == ["12.50", "4.00"]
    assert order["status"] == "PENDING"
    assert order["processed_at"] is None
    assert order["created_at"].endswith("Z")
    assert "idempotent-replayed" not in response.headers


async def test_a_placed_order_says_where_it_is(client: Client, alice: Account) -> None:
    placed = await client.post("/orders", json=order_body("1.00"), headers=alice.headers)
    replayed = await client.post(
        "/orders", json=order_body("2.00"), headers={**alice.headers, "Idempotency-Key": "where"}
    )
    again = await client.post(
        "/orders", json=order_body("2.00"), headers={**alice.headers, "Idempotency-Key": "where"}
    )

    for response in (placed, replayed, again):
        location = response.headers["location"]
        assert location == f"/orders/{response.json()['id']}"
        assert (await client.get(location, headers=alice.headers)).json() == response.json()
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_matching_total_is_accepted(client: Client, alice: Account) -> None:
    body = {**order_body("0.10", "0.20"), "total_price": "0.30"}
    response = await client.post("/orders", json=body, headers=alice.headers)
    assert response.status_code == 201
    assert response.json()["total_price"] == "0.30"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"name": "x", "quantity": 1, "price": "1"}] * 101}, "items"),
        ({}, "items"),
        ({**order_body("1.00", "2.00"), "total_price": "3.01"}, "total_price"),
        ({**order_body("1.00"), "total_price": "abc"}, "total_price"),
        ({**order_body("1.00"), "status": "PAID"}, "status"),
        ({"items": [{"name": "", "quantity": 1, "price": "1"}]}, "items[0].name"),
        ({"items": [{"name": "x" * 201, "quantity": 1, "price": "1"}]}, "items[0].name"),
        ({"items": [{"name": "nul\x00byte", "quantity": 1, "price": "1"}]}, "items[0].name"),
        ({"items": [{"name": "x", "quantity": 0, "price": "1"}]}, "items[0].quantity"),
        ({"items": [{"name": "x", "quantity": 1.5, "price": "1"}]}, "items[0].quantity"),
        ({"items": [{"name": "x", "quantity": 1, "price": "0"}]}, "items[0].price"),
        ({"items": [{"name": "x", "quantity": 1, "price": "-1.00"}]}, "items[0].price"),
        ({"items": [{"name": "x", "quantity": 1, "price": "1.001"}]}, "items[0].price"),
        ({"items": [{"name": "x", "quantity": 1, "price": "NaN"}]}, "items[0].price"),
        ({"items": [{"name": "x", "quantity": 1, "price": "1e400"}]}, "items[0].price"),
        ({"items": [{"name": "x", "quantity": 1}]}, "items[0].price"),
        ({"items": [{"name": "x", "quantity": 1, "price": "1", "discount": "1"}]}, "items[0].discount"),
    ],
)
async def test_invalid_orders_are_422_naming_the_field(
    client: Client, alice: Account, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/orders", json=body, headers=alice.headers)

    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_orders_need_a_token(client: Client) -> None:
    assert (await client.post("/orders", json=order_body("1.00"))).status_code == 401
    assert (await client.get("/orders")).status_code == 401
    assert (await client.get(f"/orders/{uuid4()}")).status_code == 401


async def test_reading_an_order(client: Client, alice: Account) -> None:
    placed = await place_order(client, alice, "5.00")

    for path in (f"/orders/{placed['id']}", f"/orders/{placed['id']}/"):
        response = await client.get(path, headers=alice.headers)
        assert response.status_code == 200
        assert response.json() == placed


async def test_listing_and_changing_orders_answer_with_a_trailing_slash(
    client: Client, alice: Account
) -> None:
    order = await place_order(client, alice)

    listed = await client.get("/orders/", headers=alice.headers)
    patched = await client.patch(f"/orders/{order['id']}/", json={"status": "PAID"}, headers=alice.headers)

    assert listed.status_code == 200
    assert [listed_order["id"] for listed_order in listed.json()] == [order["id"]]
    assert listed.headers["x-total-count"] == "1"
    assert patched.status_code == 200
    assert patched.json()["status"] == "PAID"


async def test_unknown_and_foreign_orders_are_indistinguishable_404s(
    client: Client, alice: Account, bob: Account
) -> None:
    alices = await place_order(client, alice)
    await client.get(f"/orders/{alices['id']}", headers=alice.headers)  # now cached

    foreign = await client.get(f"/orders/{alices['id']}", headers=bob.headers)
    unknown = await client.get(f"/orders/{uuid4()}", headers=bob.headers)

    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()
    patched = await client.patch(f"/orders/{alices['id']}", json={"status": "CANCELED"}, headers=bob.headers)
    assert patched.status_code == 404


async def test_a_malformed_order_id_is_422(client: Client, alice: Account) -> None:
    response = await client.get("/orders/not-a-uuid", headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "order_id"


@pytest.mark.parametrize(
    ("path", "final"),
    [
        (["PAID", "SHIPPED"], "SHIPPED"),
        (["PAID", "CANCELED"], "CANCELED"),
        (["CANCELED"], "CANCELED"),
    ],
)
async def test_allowed_transitions(client: Client, alice: Account, path: list[str], final: str) -> None:
    order = await place_order(client, alice)
    for status in path:
        response = await client.patch(
            f"/orders/{order['id']}", json={"status": status}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status
    assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()["status"] == final


@pytest.mark.parametrize(
    ("path", "forbidden"),
    [
        ([], "SHIPPED"),
        ([], "PENDING"),
        (["PAID"], "PAID"),
        (["PAID"], "PENDING"),
        (["PAID", "SHIPPED"], "CANCELED"),
        (["PAID", "SHIPPED"], "PAID"),
        (["CANCELED"], "PAID"),
        (["CANCELED"], "PENDING"),
    ],
)
async def test_forbidden_transitions_are_409_naming_the_current_status(
    client: Client, alice: Account, path: list[str], forbidden: str
) -> None:
    order = await place_order(client, alice)
    for status in path:
        await client.patch(f"/orders/{order['id']}", json={"status": status}, headers=alice.headers)
    current = path[-1] if path else "PENDING"

    response = await client.patch(f"/orders/{order['id']}", json={"status": forbidden}, headers=alice.headers)

    assert response.status_code == 409
    assert current in response.json()["detail"]
    assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()["status"] == current


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "LOST"}, "status"),
        ({"status": None}, "status"),
        ({"status": "PAID", "total_price": "0.01"}, "total_price"),
        ({"status": "PAID", "user_id": str(uuid4())}, "user_id"),
    ],
)
async def test_patch_accepts_a_known_status_and_nothing_else(
    client: Client, alice: Account, body: dict[str, Any], field: str
) -> None:
    order = await place_order(client, alice, "7.00")

    response = await client.patch(f"/orders/{order['id']}", json=body, headers=alice.headers)

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == [field]
    after = (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()
    assert after == order


async def test_an_empty_patch_changes_nothing_and_answers_the_order(
    client: Client, alice: Account, bob: Account
) -> None:
    order = await place_order(client, alice, "7.00")

    response = await client.patch(f"/orders/{order['id']}", json={}, headers=alice.headers)
    foreign = await client.patch(f"/orders/{order['id']}", json={}, headers=bob.headers)

    assert response.status_code == 200
    assert response.json() == order
    assert foreign.status_code == 404


async def test_patch_changes_the_status_and_nothing_else(client: Client, alice: Account) -> None:
    order = await place_order(client, alice, "3.00", "4.50")

    patched = (
        await client.patch(f"/orders/{order['id']}", json={"status": "PAID"}, headers=alice.headers)
    ).json()

    unchanged = {key: value for key, value in order.items() if key not in {"status", "updated_at"}}
    assert {key: value for key, value in patched.items() if key in unchanged} == unchanged
    assert patched["updated_at"] > order["updated_at"]


async def test_listing_pages_newest_first_with_the_total(
    client: Client, alice: Account, bob: Account
) -> None:
    placed = [await place_order(client, alice, f"{n}.00") for n in range(1, 6)]
    await place_order(client, bob)

    first = await client.get(f"/orders/user/{alice.id}", params={"limit": 2}, headers=alice.headers)
    rest = await client.get(
        f"/orders/user/{alice.id}/", params={"limit": 2, "offset": 2}, headers=alice.headers
    )
    everything = await client.get("/orders", headers=alice.headers)
    past_the_end = await client.get("/orders", params={"offset": 5}, headers=alice.headers)

    assert first.status_code == rest.status_code == everything.status_code == past_the_end.status_code == 200
    newest_first = [order["id"] for order in reversed(placed)]
    assert [order["id"] for order in first.json()] == newest_first[:2]
    assert [order["id"] for order in rest.json()] == newest_first[2:4]
    assert [order["id"] for order in everything.json()] == newest_first
    assert (
        first.headers["x-total-count"]
        == rest.headers["x-total-count"]
        == everything.headers["x-total-count"]
        == past_the_end.headers["x-total-count"]
        == "5"
    )
    assert past_the_end.json() == []
    read = [(await client.get(f"/orders/{order['id']}", headers=alice.headers)).json() for order in placed]
    assert everything.json() == list(reversed(read))  # a page's orders are the orders as read one by one


async def test_listing_defaults_to_50_and_rejects_bad_pages(client: Client, alice: Account) -> None:
    await asyncio.gather(*(place_order(client, alice) for _ in range(51)))

    page = await client.get("/orders", headers=alice.headers)
    assert len(page.json()) == 50
    assert page.headers["x-total-count"] == "51"
    far = await client.get("/orders", params={"offset": 2**31 - 1}, headers=alice.headers)
    assert far.json() == []
    assert far.headers["x-total-count"] == "51"
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"limit": 1_000_000},
        {"offset": -1},
        {"offset": 2**31},
        {"offset": 10**19},  # past PostgreSQL's bigint: it was a 500
        {"limit": "many"},
    ):
        response = await client.get("/orders", params=params, headers=alice.headers)
        assert response.status_code == 422, params


async def test_another_users_list_is_403(client: Client, alice: Account, bob: Account) -> None:
    await place_order(client, alice)
    response = await client.get(f"/orders/user/{alice.id}", headers=bob.headers)
    assert response.status_code == 403


async def test_an_empty_list_has_a_zero_total(client: Client, alice: Account) -> None:
    response = await client.get("/orders", headers=alice.headers)
    assert response.json() == []
    assert response.headers["x-total-count"] == "0"


async def test_a_retry_with_the_same_idempotency_key_returns_the_first_order(
    client: Client, alice: Account
) -> None:
    headers = {**alice.headers, "Idempotency-Key": "checkout-42"}

    first = await client.post("/orders", json=order_body("9.99"), headers=headers)
    retry = await client.post("/orders", json=order_body("9.99"), headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert (await client.get("/orders", headers=alice.headers)).headers["x-total-count"] == "1"


async def test_concurrent_retries_create_one_order(client: Client, alice: Account) -> None:
    headers = {**alice.headers, "Idempotency-Key": "double-click"}

    answers = await asyncio.gather(
        *(client.post("/orders", json=order_body("1.00"), headers=headers) for _ in range(8))
    )

    assert {response.status_code for response in answers} == {201}
    assert len({response.json()["id"] for response in answers}) == 1
    assert (await client.get("/orders", headers=alice.headers)).headers["x-total-count"] == "1"


async def test_the_same_key_with_another_body_is_422(client: Client, alice: Account) -> None:
    headers = {**alice.headers, "Idempotency-Key": "checkout-43"}
    await client.post("/orders", json=order_body("9.99"), headers=headers)

    response = await client.post("/orders", json=order_body("19.99"), headers=headers)

    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["detail"]


async def test_idempotency_keys_belong_to_their_user(client: Client, alice: Account, bob: Account) -> None:
    alices = await client.post(
        "/orders", json=order_body("1.00"), headers={**alice.headers, "Idempotency-Key": "k"}
    )
    bobs = await client.post(
        "/orders", json=order_body("1.00"), headers={**bob.headers, "Idempotency-Key": "k"}
    )

    assert bobs.status_code == 201
    assert bobs.json()["id"] != alices.json()["id"]
    assert bobs.json()["user_id"] == bob.id


async def test_an_oversized_idempotency_key_is_422(client: Client, alice: Account) -> None:
    headers = {**alice.headers, "Idempotency-Key": "k" * 256}
    response = await client.post("/orders", json=order_body("1.00"), headers=headers)
    assert response.status_code == 422


async def test_an_admin_reaches_every_users_orders(
    client: Client, settings: Settings, alice: Account
) -> None:
    order = await place_order(client, alice)
    admin = await register(client)
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        await connection.execute("UPDATE user_account SET role = 'admin' WHERE id = $1", UUID(admin.id))
    finally:
        await connection.close()
    await login(client, admin)  # the role is in tokens issued from now on

    read = await client.get(f"/orders/{order['id']}", headers=admin.headers)
    patched = await client.patch(f"/orders/{order['id']}", json={"status": "PAID"}, headers=admin.headers)
    listed = await client.get(f"/orders/user/{alice.id}", headers=admin.headers)

    assert read.status_code == 200
    assert patched.json()["status"] == "PAID"
    assert [item["id"] for item in listed.json()] == [order["id"]]
    assert (await client.get(f"/orders/{order['id']}", headers=alice.headers)).json()["status"] == "PAID"


async def test_a_key_older_than_24_hours_creates_a_new_order(
    client: Client, settings: Settings, alice: Account
) -> None:
    headers = {**alice.headers, "Idempotency-Key": "monthly-restock"}
    first = (await client.post("/orders", json=order_body("5.00"), headers=headers)).json()
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        await connection.execute(
            "UPDATE order_idempotency_key SET created_at = now() - interval '25 hours' WHERE order_id = $1",
            UUID(first["id"]),
        )
    finally:
        await connection.close()

    again = await client.post("/orders", json=order_body("5.00"), headers=headers)
    retry = await client.post("/orders", json=order_body("5.00"), headers=headers)

    assert again.status_code == 201
    assert again.json()["id"] != first["id"]
    assert "idempotent-replayed" not in again.headers
    assert retry.json()["id"] == again.json()["id"]


async def test_concurrent_retries_after_24_hours_create_one_new_order(
    client: Client, settings: Settings, alice: Account
) -> None:
    headers = {**alice.headers, "Idempotency-Key": "weekly-restock"}
    first = (await client.post("/orders", json=order_body("5.00"), headers=headers)).json()
    connection = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        await connection.execute(
            "UPDATE order_idempotency_key SET created_at = now() - interval '25 hours' WHERE order_id = $1",
            UUID(first["id"]),
        )
        # Hold the key's row until every retry has seen it expired and waits to take it over.
        async with connection.transaction():
            await connection.execute(
                "SELECT 1 FROM order_idempotency_key WHERE order_id = $1 FOR UPDATE", UUID(first["id"])
            )
            retries = asyncio.gather(
                *(client.post("/orders", json=order_body("5.00"), headers=headers) for _ in range(8))
            )
            await asyncio.sleep(0.5)
        answers = await retries
    finally:
        await connection.close()

    assert {response.status_code for response in answers} == {201}
    assert len({response.json()["id"] for response in answers}) == 1
    assert answers[0].json()["id"] != first["id"]
    assert (await client.get("/orders", headers=alice.headers)).headers["x-total-count"] == "2"


async def test_a_key_lives_as_long_as_the_deployment_says(settings: Settings) -> None:
    """IDEMPOTENCY_KEY_TTL_SECONDS: within it a retry returns the order, past it the key starts anew."""
    async with serving(same_stores(settings, idempotency_key_ttl_seconds=2)) as client:
        account = await signed_up(client)
        headers = {**account.headers, "Idempotency-Key": "short-lived"}
        first = await client.post("/orders", json=order_body("5.00"), headers=headers)
        replayed = await client.post("/orders", json=order_body("5.00"), headers=headers)
        await asyncio.sleep(2.1)
        again = await client.post("/orders", json=order_body("5.00"), headers=headers)

    assert replayed.json()["id"] == first.json()["id"]
    assert replayed.headers["idempotent-replayed"] == "true"
    assert again.status_code == 201
    assert again.json()["id"] != first.json()["id"]
