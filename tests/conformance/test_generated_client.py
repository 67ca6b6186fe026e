"""A Python client generated from the live API's OpenAPI document (openapi-python-client) goes through the
whole flow a client has: register, log in, place, read, change, list, refresh, log out.

The client is generated into a temporary directory on every run and never committed: the test proves the
document as it is now is enough to write a working client from.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest

from tests.conformance.conftest import LiveApi
from tests.support import PASSWORD, new_email

PACKAGE = "orders_client"


@pytest.fixture(scope="module")
def generated(live_api: LiveApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated package, importable as ``orders_client``."""
    root = tmp_path_factory.mktemp("generated-client")
    config = root / "config.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")  # no formatter to run
    generation = subprocess.run(
        [
            Path(sys.executable).parent / "openapi-python-client",
            "generate",
            "--url",
            live_api.schema_url,
            "--meta",
            "none",
            "--output-path",
            root / PACKAGE,
            "--config",
            config,
            "--fail-on-warning",  # a schema piece the generator can't turn into code fails the test
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert generation.returncode == 0, generation.stdout + generation.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def part(name: str) -> Any:
    """A module of the generated package, e.g. ``api.orders.create_order``."""
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_a_generated_client_completes_the_whole_flow(live_api: LiveApi, generated: ModuleType) -> None:
    models = part("models")
    accounts, orders = "api.accounts", "api.orders"
    email = new_email()
    # Every answer must be one the document declares: an undocumented status raises.
    anonymous = generated.Client(base_url=live_api.base_url, raise_on_unexpected_status=True)

    user = part(f"{accounts}.register").sync(
        client=anonymous, body=models.Registration(email=email, password=PASSWORD)
    )
    assert isinstance(user, models.UserRead)
    assert user.email == email

    tokens = part(f"{accounts}.login").sync(
        client=anonymous, body=models.PasswordGrant(username=email, password=PASSWORD)
    )
    assert isinstance(tokens, models.TokenPair)
    client = generated.AuthenticatedClient(
        base_url=live_api.base_url, token=tokens.access_token, raise_on_unexpected_status=True
    )

    item = models.OrderItem(name="Espresso beans", quantity=2, price="12.50")
    placed = part(f"{orders}.create_order").sync_detailed(
        client=client, body=models.OrderCreate(items=[item]), idempotency_key="generated-client-1"
    )
    assert placed.status_code == HTTPStatus.CREATED
    order = placed.parsed
    assert isinstance(order, models.OrderRead)
    assert order.total_price == "25.00"
    assert order.status == models.OrderStatus.PENDING
    assert placed.headers["location"] == f"/orders/{order.id}"

    read = part(f"{orders}.get_order").sync(order.id, client=client)
    assert isinstance(read, models.OrderRead)
    assert read.id == order.id
    assert isinstance(read.id, UUID)
    assert [(line.name, line.quantity, line.price) for line in read.items] == [("Espresso beans", 2, "12.50")]

    paid = part(f"{orders}.update_order_status").sync(
        order.id, client=client, body=models.OrderStatusUpdate(status=models.OrderStatus.PAID)
    )
    assert isinstance(paid, models.OrderRead)
    assert paid.status == models.OrderStatus.PAID

    page = part(f"{orders}.list_orders").sync_detailed(client=client, limit=10, offset=0)
    assert page.status_code == HTTPStatus.OK
    assert [listed.id for listed in page.parsed] == [order.id]
    assert page.headers["x-total-count"] == "1"

    refreshed = part(f"{accounts}.refresh_token").sync(
        client=anonymous, body=models.RefreshRequest(refresh_token=tokens.refresh_token)
    )
    assert isinstance(refreshed, models.TokenPair)
    client = generated.AuthenticatedClient(
        base_url=live_api.base_url, token=refreshed.access_token, raise_on_unexpected_status=True
    )
    assert isinstance(part(f"{accounts}.get_current_user").sync(client=client), models.UserRead)

    logged_out = part(f"{accounts}.logout").sync_detailed(client=client)
    assert logged_out.status_code == HTTPStatus.NO_CONTENT

    refused = part(f"{accounts}.get_current_user").sync(client=client)
    assert isinstance(refused, models.ProblemDetails)
    assert refused.status == 401
