"""The documentation pages load every file from the service itself, and the service serves each one.

tests/browser renders the pages in Chromium; this checks the same promise cheaply on every run.
"""

from __future__ import annotations

import re

import pytest
from httpx import AsyncClient

from app.docs.pages import ASSETS_DIR, BUNDLES

PAGES = ["/schema/swagger", "/schema/redoc", "/schema/scalar"]
# Every address a page's markup can load: script src, stylesheet and icon href.
_LOADED = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", PAGES)
async def test_a_page_loads_nothing_from_another_origin(client: AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    # Whatever a bundle's code would fetch from elsewhere, the browser refuses.
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "connect-src 'self'" in policy
    loaded = _LOADED.findall(response.text)
    assert loaded, "the page loads no script"
    for address in loaded:
        assert address.startswith(("/", "data:")), f"{page} loads {address}"
        if address.startswith("/"):
            asset = await client.get(address)
            assert asset.status_code == 200, address
            assert "max-age=31536000" in asset.headers["cache-control"]


async def test_docs_redirects_to_swagger_ui(client: AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code in {301, 302, 307, 308}
    assert response.headers["location"] == "/schema/swagger"


def test_every_pinned_file_is_vendored_and_nothing_else() -> None:
    pinned = {ASSETS_DIR / bundle.directory / name for bundle in BUNDLES for name in bundle.files}
    vendored = {path for path in ASSETS_DIR.rglob("*") if path.is_file()}
    assert vendored == pinned


async def test_no_path_leaves_the_assets_directory(client: AsyncClient) -> None:
    response = await client.get("/schema/assets/../../../config.py")
    assert response.status_code == 404
