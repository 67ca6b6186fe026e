"""A script on another origin uses the API in a real browser, as a single-page app would: it places orders
and reads where each one is (``Location``), then follows the cursor pages (``Link``, ``X-Next-Cursor``) to
the end. A browser hides from such a script every response header CORS does not expose."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Browser, DocsServer, api_server, browser_on
from tests.support import PASSWORD, free_port, new_email, order_body

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>another origin</title></head><body><script>
// What this origin's script can read of the API's answers: a header CORS does not expose reads as null.
async function exercise(api, token, body) {
  const auth = {Authorization: `Bearer ${token}`};
  const headers = (response, names) =>
    Object.fromEntries(names.map((name) => [name, response.headers.get(name)]));
  const place = async (key) => {
    const response = await fetch(`${api}/orders`, {
      method: "POST",
      headers: {...auth, "Content-Type": "application/json", "Idempotency-Key": key},
      body: JSON.stringify(body),
    });
    const order = await response.json();
    return {status: response.status, id: order.id, ...headers(response, ["Location", "Idempotent-Replayed"])};
  };
  const placed = [await place("first"), await place("second"), await place("third")];
  const replayed = await place("first");
  const pages = [];
  for (let url = `${api}/orders?limit=2`; url; ) {
    const response = await fetch(url, {headers: auth});
    const ids = (await response.json()).map((order) => order.id);
    const read = headers(
      response, ["Link", "X-Next-Cursor", "X-Total-Count", "X-Request-ID", "RateLimit-Remaining"]
    );
    pages.push({status: response.status, ids, ...read});
    url = read.Link ? new URL(read.Link.match(/<([^>]*)>/)[1], url).href : null;
  }
  return {placed, replayed, pages};
}
</script></body></html>
"""


@pytest.fixture(scope="module")
def page_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The second origin: a static page on another port of loopback."""
    directory = tmp_path_factory.mktemp("page")
    (directory / "index.html").write_text(PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory, page_origin: str) -> Iterator[DocsServer]:
    """The API, which lets the page's origin in."""
    with api_server(tmp_path_factory.mktemp("cors-server"), CORS_ALLOWED_ORIGINS=page_origin) as server:
        yield server


@pytest.fixture
def page(
    request: pytest.FixtureRequest, chromium_installed: None, page_origin: str, tmp_path: Path
) -> Iterator[Browser]:
    """Chromium on the page's origin; a failing test's artifacts are saved (see conftest)."""
    with browser_on(request, page_origin, tmp_path) as opened:
        opened.open("/index.html")
        yield opened


def access_token(api: DocsServer) -> str:
    email = new_email()
    registered = httpx.post(
        f"{api.base_url}/register", json={"email": email, "password": PASSWORD}, timeout=30
    )
    assert registered.status_code == 201, registered.text
    token = httpx.post(f"{api.base_url}/token", data={"username": email, "password": PASSWORD}, timeout=30)
    assert token.status_code == 200, token.text
    return str(token.json()["access_token"])


def run_page(page: Browser, api: DocsServer) -> dict[str, Any]:
    script = (
        "const done = arguments[arguments.length - 1];"
        "exercise(...Array.from(arguments).slice(0, 3)).then(done, (error) => done({error: String(error)}));"
    )
    page.driver.set_script_timeout(60)
    outcome: dict[str, Any] = page.driver.execute_async_script(
        script, api.base_url, access_token(api), order_body("10.00")
    )
    assert "error" not in outcome, f"{outcome['error']}{page.troubles()}"
    return outcome


def test_a_page_on_another_origin_reads_locations_and_follows_cursor_pages(
    page: Browser, cors_server: DocsServer
) -> None:
    outcome = run_page(page, cors_server)

    placed, replayed, pages = outcome["placed"], outcome["replayed"], outcome["pages"]
    assert [order["status"] for order in placed] == [201, 201, 201]
    assert [order["Location"] for order in placed] == [f"/orders/{order['id']}" for order in placed]
    assert replayed["Idempotent-Replayed"] == "true"
    assert replayed["Location"] == placed[0]["Location"]
    assert [len(page["ids"]) for page in pages] == [2, 1]  # newest first, two a page, to the end
    assert {order_id for page in pages for order_id in page["ids"]} == {order["id"] for order in placed}
    first, last = pages
    assert first["X-Next-Cursor"] is not None
    assert first["Link"] is not None
    assert last["Link"] is None
    assert first["X-Total-Count"] == "3"
    assert first["X-Request-ID"] is not None
    assert first["RateLimit-Remaining"] is not None
