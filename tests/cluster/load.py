"""A steady mixed load through the load balancer, as real clients make it, with what each request got.

Each user, in a loop at a steady pace: creates an order with an ``Idempotency-Key``, reads it, and now and
then lists its orders or pays one. A create that is answered 502, 503 or 504, refused, or cut in flight is
sent again with the same key (after the 503's ``Retry-After``), as the README tells clients to, until it is
answered 201 or the load stops: every create then either has an order the client knows of, or is unresolved.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx

from tests.support import PASSWORD, new_email

RETRIED_STATUSES = {502, 503, 504}
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_RETRY_WAIT_SECONDS = 5.0
LOAD_BALANCER_503 = "No API host can take the request now"
"""The load balancer's own 503 (cluster/templates/haproxy.cfg), told apart from the API's."""


@dataclass
class Figures:
    """What the clients saw."""

    answers: Counter[str] = field(default_factory=Counter)
    """Every request's outcome, as ``<operation> <status>`` or ``<operation> <error>``."""
    created: dict[str, str] = field(default_factory=dict)
    """Each key answered 201, and its order's id."""
    unresolved: set[str] = field(default_factory=set)
    """Keys of creates never answered 201."""
    paid: set[str] = field(default_factory=set)
    """Orders a PATCH to PAID may have reached (answered or not)."""
    created_at: list[tuple[float, float]] = field(default_factory=list)
    """When each create answered 201 was sent, and when its answer arrived (monotonic)."""
    users: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Requests not answered 2xx."""
        return sum(count for outcome, count in self.answers.items() if not _succeeded(outcome))

    def first_created_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first 201 answered to a create sent after it."""
        later = [answered for sent, answered in self.created_at if sent > moment]
        return round(min(later) - moment, 1) if later else None

    def failures(self) -> set[str]:
        """How the requests that failed failed: statuses (``503``), or ``timeout``, ``refused``, ``cut``."""
        return {outcome.split()[1] for outcome in self.answers if not _succeeded(outcome)}

    def statuses(self) -> dict[str, int]:
        return dict(sorted(self.answers.items()))

    def server_errors(self) -> dict[str, int]:
        """Answers that are the service's own failure: a 500, or a 503 that doesn't say when to retry."""
        return {
            outcome: count
            for outcome, count in self.answers.items()
            if outcome.split()[1] == "500" or "without Retry-After" in outcome
        }


def _succeeded(outcome: str) -> bool:
    return outcome.split()[1].startswith("2")


class SteadyLoad:
    """``users`` clients at about ``rate`` requests a second in all, in a thread of their own."""

    def __init__(self, url: str, users: int = 8, rate: float = 60.0) -> None:
        self.url = url
        self.users = users
        self.pause = users / rate  # between one user's requests
        self.figures = Figures()
        self.in_flight = 0
        """Requests sent and not yet answered."""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> Figures:
        self._stop.set()
        self._thread.join(120)
        if self._error is not None:
            raise self._error
        return self.figures

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.users * 2)
        try:
            async with httpx.AsyncClient(
                base_url=self.url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
            ) as client:
                tokens = await asyncio.gather(*(self._sign_up(client) for _ in range(self.users)))
                self._ready.set()
                await asyncio.gather(*(self._user(client, token) for token in tokens))
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()

    async def _sign_up(self, client: httpx.AsyncClient) -> str:
        email = new_email()
        registered = await client.post("/register", json={"email": email, "password": PASSWORD})
        registered.raise_for_status()
        self.figures.users.append(registered.json()["id"])
        token = await client.post("/token", data={"username": email, "password": PASSWORD})
        token.raise_for_status()
        return str(token.json()["access_token"])

    async def _user(self, client: httpx.AsyncClient, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        turn = 0
        while not self._stop.is_set():
            turn += 1
            order = await self._create(client, headers)
            if order is not None:
                await self._request(client, "read", "GET", f"/orders/{order}", headers=headers)
                if turn % 2 == 0:
                    await self._request(client, "list", "GET", "/orders?limit=10", headers=headers)
                if turn % 3 == 0:
                    self.figures.paid.add(order)
                    path, paid = f"/orders/{order}", {"status": "PAID"}
                    await self._request(client, "pay", "PATCH", path, headers=headers, body=paid)
            await asyncio.sleep(self.pause)

    async def _create(self, client: httpx.AsyncClient, headers: dict[str, str]) -> str | None:
        """The order's id once a create is answered 201, sending it again with its key while it fails."""
        key = uuid4().hex
        body = {"items": [{"name": "Espresso beans, 1 kg", "quantity": 2, "price": "12.50"}]}
        self.figures.unresolved.add(key)
        while not self._stop.is_set():
            keyed = {**headers, "Idempotency-Key": key}
            sent = time.monotonic()
            response = await self._request(client, "create", "POST", "/orders", headers=keyed, body=body)
            if response is not None and response.status_code == 201:
                self.figures.unresolved.discard(key)
                self.figures.created[key] = response.json()["id"]
                self.figures.created_at.append((sent, time.monotonic()))
                return str(response.json()["id"])
            if response is not None and response.status_code not in RETRIED_STATUSES:
                raise AssertionError(f"create answered {response.status_code}: {response.text}")
            await asyncio.sleep(_retry_after(response))
        return None

    async def _request(
        self,
        client: httpx.AsyncClient,
        operation: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        body: Any = None,
    ) -> httpx.Response | None:
        self.in_flight += 1
        try:
            response = await client.request(method, path, headers=headers, json=body)
        except httpx.ConnectError:
            self.figures.answers[f"{operation} refused"] += 1
            return None
        except httpx.TimeoutException:
            self.figures.answers[f"{operation} timeout"] += 1
            return None
        except httpx.TransportError:  # the connection closed mid-request
            self.figures.answers[f"{operation} cut"] += 1
            return None
        finally:
            self.in_flight -= 1
        status = str(response.status_code)
        if response.status_code == 503 and "retry-after" not in response.headers:
            status += " without Retry-After"
        if response.status_code == 503 and LOAD_BALANCER_503 in response.text:
            status = "lb-503"  # no API host took it
        self.figures.answers[f"{operation} {status}"] += 1
        return response


def _retry_after(response: httpx.Response | None) -> float:
    if response is None:
        return 0.2
    try:
        return min(float(response.headers.get("retry-after", "0.2")), MAX_RETRY_WAIT_SECONDS)
    except ValueError:
        return 0.2
