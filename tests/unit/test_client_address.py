from __future__ import annotations

from typing import Any

from litestar.connection import Request

from app.web.rate_limit import ClientAddress


def request_from(peer: str, forwarded_for: str | None = None) -> Request[Any, Any, Any]:
    headers = [(b"x-forwarded-for", forwarded_for.encode())] if forwarded_for else []
    scope = {"type": "http", "client": (peer, 40000), "headers": headers}
    return Request(scope=scope)  # type: ignore[arg-type]  # a partial scope: what ClientAddress reads, no more


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    identify = ClientAddress.trusting([])
    assert identify(request_from("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    identify = ClientAddress.trusting(["10.0.0.0/8"])
    assert identify(request_from("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_a_trusted_proxy_passes_on_the_client_address() -> None:
    identify = ClientAddress.trusting(["10.0.0.0/8"])
    assert identify(request_from("10.1.2.3", "198.51.100.1")) == "198.51.100.1"


def test_a_client_cannot_choose_its_identity_by_sending_the_header_itself() -> None:
    identify = ClientAddress.trusting(["10.0.0.0/8"])
    # the client sent "1.2.3.4"; the trusted proxy appended the address it really saw
    assert identify(request_from("10.1.2.3", "1.2.3.4, 198.51.100.1")) == "198.51.100.1"


def test_chains_of_trusted_proxies_are_walked_from_the_right() -> None:
    identify = ClientAddress.trusting(["10.0.0.0/8", "192.168.0.1"])
    assert identify(request_from("10.1.2.3", "198.51.100.1, 192.168.0.1, 10.9.9.9")) == "198.51.100.1"


def test_a_trusted_proxy_without_the_header_is_the_client() -> None:
    identify = ClientAddress.trusting(["10.0.0.0/8"])
    assert identify(request_from("10.1.2.3")) == "10.1.2.3"
