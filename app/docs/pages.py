"""The API documentation pages, served with no network beyond the service.

Litestar's render plugins load Swagger UI, Redoc and Scalar from public CDNs (Redoc and Scalar at
``@latest``), so the pages are blank on a network that can't reach them. The bundles are vendored here
instead, at pinned versions with their licenses (``app/docs/assets``, refreshed from the npm registry
by ``just docs-assets``), and served under ``/schema/assets``. A version is part of each URL, so browsers
may keep a file for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.openapi.plugins import (
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    ScalarRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router

from app.docs.openapi import complete_document

ASSETS_DIR = Path(__file__).parent / "assets"
ASSETS_PATH = "/schema/assets"
# What the pages may load: the service's own files, and their inline start-up scripts and styles. Whatever a
# bundle would fetch from elsewhere (Redoc's logo from cdn.redoc.ly, say) the browser refuses to request.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)
# Litestar's pages link a favicon and Scalar's a theme stylesheet from a CDN; empty data URLs fetch nothing.
_NO_FAVICON = "<link rel='icon' href='data:,'>"
_NO_STYLESHEET = "data:text/css,"


@dataclass(frozen=True)
class Bundle:
    """One npm package's files that a page loads: ``files`` maps the served name to the tarball's path."""

    package: str
    version: str
    files: dict[str, str]

    @property
    def directory(self) -> str:
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}"

    def url(self, name: str) -> str:
        return f"{ASSETS_PATH}/{self.directory}/{name}"


SWAGGER_UI = Bundle(
    "swagger-ui-dist",
    "5.35.0",
    {
        "swagger-ui-bundle.js": "package/swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js": "package/swagger-ui-standalone-preset.js",
        "swagger-ui.css": "package/swagger-ui.css",
        "LICENSE": "package/LICENSE",
        "NOTICE": "package/NOTICE",
    },
)
# 2.x: Litestar's page calls ``Redoc.init``, which 3.x no longer defines.
REDOC = Bundle(
    "redoc",
    "2.5.4",
    {"redoc.standalone.js": "package/bundles/redoc.standalone.js", "LICENSE": "package/LICENSE"},
)
# The tarball has no LICENSE file; its package.json states the license (MIT) and the source repository.
SCALAR = Bundle(
    "@scalar/api-reference",
    "1.76.4",
    {"standalone.js": "package/dist/browser/standalone.js", "package.json": "package/package.json"},
)
BUNDLES = (SWAGGER_UI, REDOC, SCALAR)


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Swagger UI (the first: ``/schema`` and ``/docs`` show it), Redoc and Scalar, on the vendored files."""
    return [
        SwaggerRenderPlugin(
            js_url=SWAGGER_UI.url("swagger-ui-bundle.js"),
            standalone_preset_js_url=SWAGGER_UI.url("swagger-ui-standalone-preset.js"),
            css_url=SWAGGER_UI.url("swagger-ui.css"),
            favicon=_NO_FAVICON,
        ),
        RedocRenderPlugin(js_url=REDOC.url("redoc.standalone.js"), google_fonts=False, favicon=_NO_FAVICON),
        ScalarRenderPlugin(
            js_url=SCALAR.url("standalone.js"),
            css_url=_NO_STYLESHEET,
            favicon=_NO_FAVICON,
            # Its default fonts come from fonts.scalar.com, and its toolbar and "Ask AI" call scalar.com:
            # the system's fonts and the reference alone need no network.
            options={"withDefaultFonts": False, "showDeveloperTools": "never", "agent": {"disabled": True}},
        ),
    ]


def docs_router() -> Router:
    """The router Litestar adds the pages and the document to (``OpenAPIConfig.openapi_router``)."""
    return Router(
        "/schema",
        route_handlers=[],
        include_in_schema=False,
        before_request=complete_document,
        response_headers=[ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY)],
    )


def assets_router() -> Router:
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS_DIR],
        cache_control=CacheControlHeader(max_age=365 * 24 * 3600, public=True),
        include_in_schema=False,
        opt={"exclude_from_auth": True},
    )
