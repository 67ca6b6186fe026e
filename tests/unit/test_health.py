"""The readiness probe's cached check: one ping at a time, reused until it is ``max_age`` old."""

from __future__ import annotations

import asyncio

from app.observability.health import CachedCheck


class Pinged:
    """A ping that counts its calls and, while ``held``, does not answer."""

    def __init__(self) -> None:
        self.calls = 0
        self.held = asyncio.Event()
        self.held.set()
        self.failing = False

    async def __call__(self) -> None:
        self.calls += 1
        await self.held.wait()
        if self.failing:
            raise ConnectionRefusedError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_callers_share_one_ping() -> None:
    ping, clock = Pinged(), Clock()
    check = CachedCheck(ping, max_age=1.0, clock=clock)
    ping.held.clear()

    waiting = [asyncio.ensure_future(check.result()) for _ in range(1000)]
    await asyncio.sleep(0)
    ping.held.set()
    results = await asyncio.gather(*waiting)

    assert ping.calls == 1
    assert {result.status for result in results} == {"ok"}


async def test_a_result_is_reused_until_it_is_max_age_old() -> None:
    ping, clock = Pinged(), Clock()
    check = CachedCheck(ping, max_age=1.0, clock=clock)

    await check.result()
    clock.now += 0.9
    await check.result()
    assert ping.calls == 1

    ping.failing = True
    clock.now += 0.2
    assert (await check.result()).status == "failing"
    assert ping.calls == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_others_ping() -> None:
    ping = Pinged()
    check = CachedCheck(ping, clock=Clock())
    ping.held.clear()
    impatient = asyncio.ensure_future(check.result())
    patient = asyncio.ensure_future(check.result())
    await asyncio.sleep(0)

    impatient.cancel()
    ping.held.set()

    assert (await patient).status == "ok"
    assert ping.calls == 1
