"""A real browser for the documentation tests: headless Chromium driven by selenium, able to reach the service
under test and nothing else, and the service itself, served by granian in a process of its own on the embedded
default (a SQLite file, in-memory stores), as `just dev` serves it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.support import ROOT, free_port, migrate, wait_until_healthy

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"
WAIT_SECONDS = 30.0
"""How long an element or a response may take to appear: generous, a busy machine must not fail the test."""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--no-first-run",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    # Nothing but the service: every other host name fails to resolve, and a request to an address goes to a
    # proxy that refuses it. Requests are recorded all the same, and the tests fail on any of them.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
)
LOCAL_SCHEMES = ("data", "blob", "about", "chrome", "devtools")
"""URLs a page loads without the network."""
RERENDERED = (
    StaleElementReferenceException,
    ElementClickInterceptedException,
    ElementNotInteractableException,
)
BROWSER = pytest.StashKey["Browser"]()


@dataclass(frozen=True)
class DocsServer:
    base_url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="session")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsServer]:
    """granian serving ``app.asgi:app`` on loopback, on a migrated SQLite file of its own."""
    with api_server(tmp_path_factory.mktemp("docs-server")) as server:
        yield server


@contextmanager
def api_server(directory: Path, **environ: str) -> Iterator[DocsServer]:
    """granian serving ``app.asgi:app`` on loopback, on a migrated SQLite file in ``directory``, with these
    environment variables besides."""
    database_url = f"sqlite+aiosqlite:///{directory / 'orders.db'}"
    migrate(database_url)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": database_url,
        "RATE_LIMIT": "100000/minute",
        "AUTH_RATE_LIMIT": "100000/minute",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "8",
        "ARGON2_PARALLELISM": "1",
        **environ,
    }
    command = [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--workers", "1"]
    server = DocsServer(f"http://127.0.0.1:{port}", directory / "api.log")
    with server.log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "app.asgi:app"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(server.base_url, process, server.log_tail)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Browser:
    """A Chromium window on the service, with every request it made and every console line it printed."""

    driver: webdriver.Chrome
    origin: str
    artifacts: Path
    """Where a failing test's screenshot, page source, console and requests go."""
    requests: dict[str, str] = field(default_factory=dict)
    """Every request's URL by its id in Chromium."""
    failed: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)
    """The requests the page's own policy kept from leaving the browser."""
    console: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.driver.get(self.origin + path)

    def wait(self) -> WebDriverWait[webdriver.Chrome]:
        # A React page re-renders under our feet: an element found may be replaced, or covered for a moment.
        return WebDriverWait(self.driver, WAIT_SECONDS, ignored_exceptions=RERENDERED)

    def visible(self, css: str) -> WebElement:
        try:
            return self.wait().until(
                expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css))
            )
        except TimeoutException:
            raise AssertionError(f"{css} never showed{self.troubles()}") from None

    def click(self, css: str) -> None:
        """Click the element once it is there and can take the click."""

        def clicked(driver: webdriver.Chrome) -> bool:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True

        try:
            self.wait().until(clicked)
        except TimeoutException:
            raise AssertionError(f"could not click {css}{self.troubles()}") from None

    def type(self, css: str, text: str) -> None:
        element = self.visible(css)
        element.clear()
        element.send_keys(text)

    def wait_for_text(self, css: str, text: str) -> None:
        """Until the element's text holds ``text``; on timeout, say what it held instead."""
        try:
            self.wait().until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
        except TimeoutException:
            shown = [element.text[:2000] for element in self.driver.find_elements(By.CSS_SELECTOR, css)]
            raise AssertionError(f"{text!r} never appeared in {css}: {shown!r}{self.troubles()}") from None

    def log(self, kind: str) -> list[dict[str, Any]]:
        """The entries of one of Chromium's logs since it was last read: reading empties it."""
        entries: list[dict[str, Any]] = self.driver.get_log(kind)  # type: ignore[no-untyped-call]
        return entries

    def record(self) -> None:
        """Move what Chromium logged since the last call, requests and console lines, into this object."""
        for entry in self.log("performance"):
            message: dict[str, Any] = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if urlsplit(params.get("documentURL", "")).scheme in ("chrome", "devtools"):
                continue  # Chromium's own pages (its new tab page), loaded on starting
            if message.get("method") == "Network.requestWillBeSent":
                self.requests[params["requestId"]] = params["request"]["url"]
            elif message.get("method") == "Network.webSocketCreated":
                self.requests[params["requestId"]] = params["url"]
            elif message.get("method") == "Network.loadingFailed" and params["requestId"] in self.requests:
                self._failed(params)
        self.console += [f"{line['level']} {line['message']}" for line in self.log("browser")]

    def _failed(self, params: dict[str, Any]) -> None:
        url = self.requests[params["requestId"]]
        if params.get("blockedReason"):
            # Refused by the browser itself before any connection, e.g. by the page's Content-Security-Policy.
            self.blocked[params["requestId"]] = url
        self.failed.append(f"{url}: {params.get('errorText') or params.get('blockedReason')}")

    def foreign_requests(self) -> list[str]:
        """The requests, made so far, that left the browser for anywhere but the service's own origin."""
        self.record()
        return [
            url
            for request_id, url in self.requests.items()
            if urlsplit(url).scheme not in LOCAL_SCHEMES
            and _origin(url) != self.origin
            and request_id not in self.blocked
        ]

    def troubles(self) -> str:
        """The requests outside the service and the console's errors, to explain a page that did not work."""
        foreign = self.foreign_requests()
        errors = [line for line in self.console if line.startswith("SEVERE")]
        return f"; requests outside {self.origin}: {foreign}; console errors: {errors}"

    def save_artifacts(self) -> None:
        """A screenshot, the page's source, its console and the requests made, for a failure's reader."""
        directory = self.artifacts
        directory.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(directory / "screenshot.png"))
        (directory / "page.html").write_text(self.driver.page_source)
        self.record()
        (directory / "console.log").write_text("".join(f"{line}\n" for line in self.console))
        lines = [url[:200] for url in [*self.requests.values(), "", "failed:", *self.failed]]
        (directory / "requests.log").write_text("".join(f"{line}\n" for line in lines))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture(scope="session")
def chromium_installed() -> None:
    """Skip on a machine without Chromium, saying how to install it; in CI, where it must be, fail."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    reason = f"no {' nor '.join(missing)}: install Chromium and its driver with `{INSTALL}`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser tests, but there is {reason}")
    pytest.skip(reason)


def chromium(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # The driver given explicitly: Selenium Manager would try to download one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS * 2)
    return driver


@contextmanager
def browser_on(request: pytest.FixtureRequest, base_url: str, tmp_path: Path) -> Iterator[Browser]:
    """Chromium on ``base_url``, closed at the end; a failing test's artifacts are saved first (see below)."""
    driver = chromium(tmp_path / "profile")
    opened = Browser(driver, base_url, tmp_path / "browser-artifacts")
    request.node.stash[BROWSER] = opened
    try:
        yield opened
    finally:
        del request.node.stash[BROWSER]
        driver.quit()


@pytest.fixture
def browser(
    request: pytest.FixtureRequest, chromium_installed: None, docs_server: DocsServer, tmp_path: Path
) -> Iterator[Browser]:
    """Chromium on the service."""
    with browser_on(request, docs_server.base_url, tmp_path) as opened:
        yield opened


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """On a failing test, save what its browser shows, and say where."""
    report = yield
    opened = item.stash.get(BROWSER, None)
    if opened is not None and report.when == "call" and report.failed:
        try:
            opened.save_artifacts()
            saved = f"screenshot, page source, console and requests in {opened.artifacts}"
        except WebDriverException as exc:
            saved = f"could not be saved: {exc.msg}"
        report.sections.append(("browser artifacts", saved))
    return report
