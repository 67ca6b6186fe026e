"""Finding orders over HTTP: filters, cursor paging beside offset paging, and the admins' list of every
order, against PostgreSQL (and the embedded SQLite default once)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from httpx import AsyncClient, Response

from app.config import Settings
from tests.support import (
    Account,
    login,
    migrate,
    place_order,
    register,
    same_stores,
    serving,
    signed_up,
)

Client = AsyncClient
NEXT_LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


async def make_admin(client: Client, database_url: str) -> Account:
    account = await register(client)
    await sql(database_url, "UPDATE user_account SET role = 'admin' WHERE id = $1", UUID(account.id))
    return await login(client, account)  # the role is in tokens issued from now on


@pytest.fixture
async def admin(client: Client, settings: Settings) -> Account:
    return await make_admin(client, settings.database_url)


async def sql(database_url: str, statement: str, *args: Any) -> None:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


def ids(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [order["id"] for order in response.json()]


def next_url(response: Response) -> str | None:
    """The next page's URL from the Link header (checked against X-Next-Cursor), None on the last page."""
    if "link" not in response.headers:
        assert "x-next-cursor" not in response.headers
        return None
    match = NEXT_LINK.match(response.headers["link"])
    assert match is not None, response.headers["link"]
    assert match["url"].endswith(f"cursor={response.headers['x-next-cursor']}")
    return match["url"]


async def every_page(client: Client, url: str, account: Account, **params: Any) -> list[list[str]]:
    """The ids of each page from ``url``, following the Link headers to the end."""
    pages = []
    response = await client.get(url, params=params, headers=account.headers)
    while True:
        pages.append(ids(response))
        if (following := next_url(response)) is None:
            return pages
        response = await client.get(following, headers=account.headers)


async def orders_in_statuses(client: Client, account: Account, *statuses: str) -> list[dict[str, Any]]:
    """An order of ``account`` per status given, oldest first, each moved to its status."""
    moves = {"PENDING": [], "PAID": ["PAID"], "SHIPPED": ["PAID", "SHIPPED"], "CANCELED": ["CANCELED"]}
    orders = []
    for status in statuses:
        order = await place_order(client, account)
        for step in moves[status]:
            response = await client.patch(
                f"/orders/{order['id']}", json={"status": step}, headers=account.headers
            )
            assert response.status_code == 200, response.text
        orders.append({**order, "status": status})
    return orders


async def test_filters_by_status_and_creation_time_with_the_total_of_the_filtered(
    client: Client, alice: Account, bob: Account
) -> None:
    orders = await orders_in_statuses(client, alice, "PENDING", "PAID", "SHIPPED", "CANCELED", "PAID")
    await orders_in_statuses(client, bob, "PAID")
    newest_first = [order["id"] for order in reversed(orders)]

    for path in ("/orders", f"/orders/user/{alice.id}"):
        paid = await client.get(path, params={"status": "PAID"}, headers=alice.headers)
        paid_or_shipped = await client.get(
            path, params={"status": ["PAID", "SHIPPED"]}, headers=alice.headers
        )
        after = await client.get(
            path, params={"created_after": orders[1]["created_at"]}, headers=alice.headers
        )
        before = await client.get(
            path, params={"created_before": orders[2]["created_at"]}, headers=alice.headers
        )
        between = await client.get(
            path,
            params={
                "created_after": orders[0]["created_at"],
                "created_before": orders[4]["created_at"],
                "status": "PAID",
            },
            headers=alice.headers,
        )

        assert ids(paid) == [orders[4]["id"], orders[1]["id"]]
        assert paid.headers["x-total-count"] == "2"
        assert ids(paid_or_shipped) == [orders[4]["id"], orders[2]["id"], orders[1]["id"]]
        assert ids(after) == newest_first[:3]  # after and before are exclusive
        assert after.headers["x-total-count"] == "3"
        assert ids(before) == newest_first[3:]
        assert ids(between) == [orders[1]["id"]]
        past_the_end = await client.get(path, params={"status": "PAID", "offset": 2}, headers=alice.headers)
        assert ids(past_the_end) == []
        assert past_the_end.headers["x-total-count"] == "2"
        assert next_url(past_the_end) is None


async def test_an_offset_set_in_another_timezone_is_the_same_instant(client: Client, alice: Account) -> None:
    first, second = await orders_in_statuses(client, alice, "PENDING", "PENDING")
    instant = datetime.fromisoformat(first["created_at"])
    in_new_york = instant.astimezone(datetime.strptime("-0500", "%z").tzinfo).isoformat()

    response = await client.get("/orders", params={"created_after": in_new_york}, headers=alice.headers)

    assert ids(response) == [second["id"]]


async def test_cursor_pages_neither_repeat_nor_lose_orders_created_in_between(
    client: Client, alice: Account
) -> None:
    existing = [(await place_order(client, alice))["id"] for _ in range(7)]
    first = await client.get("/orders", params={"limit": 3}, headers=alice.headers)
    seen = [ids(first)]
    url = next_url(first)
    created_meanwhile = []
    while url is not None:
        created_meanwhile.append((await place_order(client, alice))["id"])
        page = await client.get(url, headers=alice.headers)
        assert "x-total-count" not in page.headers  # counted on the first page only
        seen.append(ids(page))
        url = next_url(page)

    assert first.headers["x-total-count"] == "7"
    assert seen == [existing[6:3:-1], existing[3:0:-1], existing[:1]]
    everything = await client.get("/orders", params={"limit": 100}, headers=alice.headers)
    assert ids(everything) == [*reversed(created_meanwhile), *reversed(existing)]  # new ones came first


async def test_orders_created_in_the_same_microsecond_are_paged_by_id(
    client: Client, settings: Settings, alice: Account
) -> None:
    placed = [(await place_order(client, alice))["id"] for _ in range(5)]
    await sql(
        settings.database_url,
        "UPDATE orders SET created_at = '2026-12-01T12:00:00Z' WHERE user_id = $1",
        UUID(alice.id),
    )

    pages = await every_page(client, "/orders", alice, limit=2)

    assert pages == [sorted(placed, reverse=True)[i : i + 2] for i in (0, 2, 4)]


async def test_offset_pages_still_work_and_link_to_the_next_by_cursor(client: Client, alice: Account) -> None:
    placed = [(await place_order(client, alice))["id"] for _ in range(6)]
    newest_first = list(reversed(placed))

    middle = await client.get("/orders", params={"limit": 2, "offset": 2}, headers=alice.headers)
    url = next_url(middle)
    assert url is not None
    assert "offset" not in url
    following = await client.get(url, headers=alice.headers)
    last = await client.get("/orders", params={"limit": 2, "offset": 4}, headers=alice.headers)

    assert ids(middle) == newest_first[2:4]
    assert middle.headers["x-total-count"] == "6"
    assert url.startswith("/orders?limit=2&cursor=")
    assert ids(following) == newest_first[4:] == ids(last)
    assert next_url(following) is None
    assert next_url(last) is None


async def test_the_link_keeps_the_filters(client: Client, alice: Account) -> None:
    orders = await orders_in_statuses(client, alice, "PAID", "PENDING", "PAID", "CANCELED", "PAID", "SHIPPED")
    paid_or_shipped = [order["id"] for order in reversed(orders) if order["status"] in {"PAID", "SHIPPED"}]

    pages = await every_page(client, f"/orders/user/{alice.id}", alice, limit=3, status=["PAID", "SHIPPED"])

    assert pages == [paid_or_shipped[:3], paid_or_shipped[3:]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "LOST"}, "status"),
        ({"status": ["PAID"] * 5}, "status"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2026-12-01T00:00:00"}, "created_before"),  # no timezone
        ({"created_after": "0001-01-01T00:00:00+01:00"}, "created_after"),  # before the first instant
        ({"created_before": "9999-12-31T23:59:59-01:00"}, "created_before"),  # after the last
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "A" * 34}, "cursor"),
        ({"cursor": "A" * 33 + "B"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
    ],
)
async def test_invalid_parameters_are_422_naming_them(
    client: Client, alice: Account, admin: Account, params: dict[str, Any], field: str
) -> None:
    for path, account in (("/orders", alice), (f"/orders/user/{alice.id}", alice), ("/orders/all", admin)):
        response = await client.get(path, params=params, headers=account.headers)

        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert [error["field"] for error in response.json()["errors"]] == [field], path


async def test_a_cursor_with_an_offset_is_422(client: Client, alice: Account) -> None:
    for _ in range(3):
        await place_order(client, alice)
    cursor = (await client.get("/orders", params={"limit": 1}, headers=alice.headers)).headers[
        "x-next-cursor"
    ]

    for offset in (0, 1):
        response = await client.get(
            "/orders", params={"cursor": cursor, "offset": offset}, headers=alice.headers
        )
        assert response.status_code == 422
        assert [error["field"] for error in response.json()["errors"]] == ["cursor"]
    assert (await client.get("/orders", params={"cursor": cursor}, headers=alice.headers)).status_code == 200


async def test_every_users_orders_are_for_admins_only(client: Client, alice: Account, bob: Account) -> None:
    await place_order(client, alice)

    for params in ({}, {"status": "LOST"}, {"user_id": alice.id}):
        response = await client.get("/orders/all", params=params, headers=bob.headers)
        assert response.status_code == 403, params
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/orders/all")).status_code == 401


async def test_an_admin_lists_every_users_orders_with_filters_and_no_total(
    client: Client, alice: Account, bob: Account, admin: Account
) -> None:
    alices = await orders_in_statuses(client, alice, "PAID", "PENDING")
    bobs = await orders_in_statuses(client, bob, "PAID", "SHIPPED")
    ours = {order["id"] for order in (*alices, *bobs)}  # the session's database holds other tests' orders

    everyone = [order for page in await every_page(client, "/orders/all", admin, limit=100) for order in page]
    paid = await client.get("/orders/all", params={"status": "PAID", "limit": 100}, headers=admin.headers)
    bobs_listed = await client.get("/orders/all", params={"user_id": bob.id}, headers=admin.headers)
    since = await client.get(
        "/orders/all", params={"created_after": alices[1]["created_at"]}, headers=admin.headers
    )

    assert [order for order in everyone if order in ours] == [
        bobs[1]["id"], bobs[0]["id"], alices[1]["id"], alices[0]["id"]
    ]  # fmt: skip
    assert len(everyone) == len(set(everyone))
    assert [order for order in ids(paid) if order in ours] == [bobs[0]["id"], alices[0]["id"]]
    assert {order["status"] for order in paid.json()} == {"PAID"}
    assert ids(bobs_listed) == [bobs[1]["id"], bobs[0]["id"]]
    assert ids(since) == [bobs[1]["id"], bobs[0]["id"]]
    assert "x-total-count" not in paid.headers


async def test_all_is_not_taken_for_an_order_id(client: Client, alice: Account, admin: Account) -> None:
    order = await place_order(client, alice)

    read = await client.get(f"/orders/{order['id']}", headers=admin.headers)
    listed = await client.get("/orders/all", params={"user_id": alice.id}, headers=admin.headers)

    assert read.json() == order
    assert ids(listed) == [order["id"]]


async def test_paging_and_filters_run_on_the_embedded_default(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    migrate(url)
    async with serving(same_stores(settings, database_url=url)) as client:
        account = await signed_up(client)
        orders = await orders_in_statuses(client, account, "PAID", "PENDING", "PAID", "PAID", "CANCELED")
        paid = [order["id"] for order in reversed(orders) if order["status"] == "PAID"]

        pages = await every_page(client, "/orders", account, limit=2, status="PAID")
        unfiltered = await every_page(client, "/orders", account, limit=2)
        by_time = await client.get(
            "/orders", params={"created_after": orders[0]["created_at"]}, headers=account.headers
        )
        offset = await client.get("/orders", params={"limit": 2, "offset": 1}, headers=account.headers)

    assert pages == [paid[:2], paid[2:]]
    newest_first = [order["id"] for order in reversed(orders)]
    assert unfiltered == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    assert ids(by_time) == [order["id"] for order in reversed(orders[1:])]
    assert ids(offset) == [order["id"] for order in reversed(orders)][1:3]
    assert offset.headers["x-total-count"] == "5"


async def test_every_kind_of_page_shows_each_column_in_its_own_field(
    client: Client, settings: Settings, alice: Account
) -> None:
    """Three timestamps of one order, each its own, come out in their own fields from the counted page and
    the page by cursor (asyncpg's) and from a filtered page (SQLAlchemy's)."""
    older, order, newer = await orders_in_statuses(client, alice, "PENDING", "PAID", "PENDING")
    times = {
        "created_at": datetime.fromisoformat("2026-12-01T10:00:00Z"),
        "updated_at": datetime.fromisoformat("2026-12-02T11:00:00Z"),
        "processed_at": datetime.fromisoformat("2026-12-03T12:00:00Z"),
    }
    await sql(
        settings.database_url,
        "UPDATE orders SET created_at = $2, updated_at = $3, processed_at = $4 WHERE id = $1",
        UUID(order["id"]),
        *times.values(),
    )
    for other, created_at in ((older, "2026-11-30T00:00:00Z"), (newer, "2026-12-05T00:00:00Z")):
        await sql(
            settings.database_url,
            "UPDATE orders SET created_at = $2 WHERE id = $1",
            UUID(other["id"]),
            datetime.fromisoformat(created_at),
        )

    counted = await client.get("/orders", params={"limit": 1, "offset": 1}, headers=alice.headers)
    following = next_url(await client.get("/orders", params={"limit": 1}, headers=alice.headers))
    assert following is not None
    by_cursor = await client.get(following, headers=alice.headers)
    filtered = await client.get("/orders", params={"status": "PAID"}, headers=alice.headers)

    for page in (counted, by_cursor, filtered):
        assert ids(page) == [order["id"]]
        [listed] = page.json()
        assert listed["status"] == "PAID"
        assert {name: datetime.fromisoformat(listed[name]) for name in times} == times
