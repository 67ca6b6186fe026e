"""Bearer authentication over HTTP: what the middleware remembers of a token never outlives the token."""

from __future__ import annotations

import asyncio

from app.config import Settings
from tests.support import same_stores, serving, signed_up


async def test_an_accepted_access_token_is_refused_once_it_expires(settings: Settings) -> None:
    async with serving(same_stores(settings, access_token_ttl_seconds=1)) as client:
        account = await signed_up(client)
        assert (await client.get("/users/me", headers=account.headers)).status_code == 200  # remembered

        await asyncio.sleep(1.1)
        refused = await client.get("/users/me", headers=account.headers)

    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"


async def test_a_refresh_token_is_never_a_credential_however_often_it_is_sent(settings: Settings) -> None:
    async with serving(settings) as client:
        account = await signed_up(client)
        refresh = {"Authorization": f"Bearer {account.tokens['refresh_token']}"}
        statuses = [(await client.get("/users/me", headers=refresh)).status_code for _ in range(2)]

    assert statuses == [401, 401]
