"""The API documentation in a real browser: Swagger UI at /docs works end to end (log in through its Authorize
dialog, place and list an order with "Try it out"), Redoc and Scalar render the operations, and every page
loads from the service alone: a browser that can reach nothing else gets a working page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Browser, DocsServer
from tests.support import PASSWORD, new_email

AUTHORIZE_DIALOG = ".modal-ux"
PLACE_ORDER = "#operations-orders-createOrder"
LIST_OWN_ORDERS = "#operations-orders-listOrders"


@dataclass(frozen=True)
class User:
    email: str
    password: str


@dataclass(frozen=True)
class Executed:
    """What Swagger UI shows of the response to an operation it executed."""

    status: str
    body: Any


@pytest.fixture
def user(docs_server: DocsServer) -> User:
    registered = User(new_email(), PASSWORD)
    response = httpx.post(
        f"{docs_server.base_url}/register",
        json={"email": registered.email, "password": registered.password},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return registered


def open_swagger_ui(browser: Browser) -> None:
    """Open /docs and wait until Swagger UI has rendered the operations."""
    browser.open("/docs")
    browser.visible(PLACE_ORDER)
    assert browser.driver.current_url == f"{browser.origin}/schema/swagger"


def assert_only_same_origin(browser: Browser, page: str) -> None:
    foreign = browser.foreign_requests()
    assert f"{browser.origin}{page}" in browser.requests.values(), f"{page} was never requested"
    assert not foreign, f"the page made requests outside {browser.origin}: {foreign}"


def authorize(swagger_ui: Browser, username: str, password: str) -> None:
    """Fill in the OAuth2 password flow of the Authorize dialog and submit it."""
    swagger_ui.click(".btn.authorize")
    swagger_ui.type(f"{AUTHORIZE_DIALOG} #oauth_username", username)
    swagger_ui.type(f"{AUTHORIZE_DIALOG} #oauth_password", password)
    swagger_ui.click(f"{AUTHORIZE_DIALOG} .auth-btn-wrapper .authorize")


def try_it_out(swagger_ui: Browser, operation: str) -> None:
    swagger_ui.click(f"{operation} .opblock-summary-control")
    swagger_ui.click(f"{operation} .try-out__btn")


def execute(swagger_ui: Browser, operation: str) -> Executed:
    """Press Execute and read the live response: its status code and its body, parsed as JSON."""
    swagger_ui.click(f"{operation} .execute")
    response = f"{operation} .live-responses-table tr.response"
    status = swagger_ui.visible(f"{response} .response-col_status").text
    shown = swagger_ui.visible(response).text
    body = swagger_ui.visible(f"{response} .highlight-code code").get_attribute("textContent")
    assert body is not None, shown
    try:
        return Executed(status, json.loads(body))
    except json.JSONDecodeError:
        raise AssertionError(f"the response shown is not JSON: {shown}") from None


def test_swagger_ui_places_and_lists_an_order_once_authorized(browser: Browser, user: User) -> None:
    swagger_ui = browser
    open_swagger_ui(swagger_ui)
    authorize(swagger_ui, user.email, user.password)
    swagger_ui.wait_for_text(f"{AUTHORIZE_DIALOG} .auth-btn-wrapper", "Logout")
    swagger_ui.click(f"{AUTHORIZE_DIALOG} .btn-done")

    try_it_out(swagger_ui, PLACE_ORDER)
    example = swagger_ui.visible(f"{PLACE_ORDER} textarea.body-param__text").get_attribute("value")
    sent = json.loads(example or "null")
    assert sent["items"], f"the page filled in no order to place: {example}"
    placed = execute(swagger_ui, PLACE_ORDER)
    assert placed.status == "201", placed.body
    assert [item["name"] for item in placed.body["items"]] == [item["name"] for item in sent["items"]]
    assert placed.body["status"] == "PENDING"

    try_it_out(swagger_ui, LIST_OWN_ORDERS)
    listed = execute(swagger_ui, LIST_OWN_ORDERS)
    assert listed.status == "200", listed.body
    assert [order["id"] for order in listed.body] == [placed.body["id"]]
    assert_only_same_origin(swagger_ui, "/schema/swagger")


def test_swagger_ui_authorize_dialog_says_why_a_wrong_password_is_refused(
    browser: Browser, user: User
) -> None:
    swagger_ui = browser
    open_swagger_ui(swagger_ui)
    authorize(swagger_ui, user.email, "not the password")
    errors = swagger_ui.visible(f"{AUTHORIZE_DIALOG} .errors")
    assert "invalid_grant" in errors.text, errors.text
    assert "Logout" not in swagger_ui.visible(f"{AUTHORIZE_DIALOG} .auth-btn-wrapper").text
    assert_only_same_origin(swagger_ui, "/schema/swagger")


@pytest.mark.parametrize("page", ["/schema/redoc", "/schema/scalar"])
def test_reference_pages_render_the_operations(browser: Browser, docs_server: DocsServer, page: str) -> None:
    document = httpx.get(f"{docs_server.base_url}/schema/openapi.json", timeout=30).json()
    browser.open(page)
    browser.wait_for_text("body", "Create an account")
    shown = browser.visible("body").text
    tags = {
        tag for operations in document["paths"].values() for op in operations.values() for tag in op["tags"]
    }
    assert tags == {"accounts", "orders", "health"}
    for tag in tags:
        assert tag in shown, f"{page} does not show the operations tagged {tag}"
    assert_only_same_origin(browser, page)
