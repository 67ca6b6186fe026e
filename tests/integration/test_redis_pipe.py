"""The request path's pipelined Redis connection, on the real Redis (tests/proxy.py cuts it off)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.storage.redis import create_redis
from app.storage.redis_pipe import PipelinedRedis, close_pipelined
from tests.proxy import Proxy, proxy_to
from tests.support import REDIS_URL


@pytest.fixture
async def clients() -> AsyncIterator[list[Redis]]:
    """redis-py clients made by the test, closed with their pipelined connections."""
    made: list[Redis] = []
    yield made
    for client in made:
        close_pipelined(client)
        await client.aclose()


def pipe_to(clients: list[Redis], url: str, timeout: float | None = 1.0) -> PipelinedRedis:
    client = create_redis(url, timeout)  # type: ignore[arg-type]  # None, no timeout, is for tests alone
    clients.append(client)
    pipe = PipelinedRedis.of(client)
    assert pipe is not None
    assert PipelinedRedis.of(client) is pipe  # one per client
    return pipe


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with proxy_to(REDIS_URL) as running:
        yield running


async def test_concurrent_calls_each_get_their_own_reply(clients: list[Redis]) -> None:
    pipe = pipe_to(clients, REDIS_URL)

    replies = await asyncio.gather(*(pipe.execute("ECHO", f"call {n}") for n in range(500)))

    assert replies == [f"call {n}".encode() for n in range(500)]


async def test_an_error_reply_is_raised_and_the_connection_goes_on(clients: list[Redis]) -> None:
    pipe = pipe_to(clients, REDIS_URL)
    key = f"test-{uuid4().hex}"
    await pipe.execute("SET", key, "not a number", "EX", 60)

    replies = await asyncio.gather(
        pipe.execute("INCR", key), pipe.execute("ECHO", "after"), return_exceptions=True
    )
    failing, after = replies

    assert isinstance(failing, ResponseError)
    assert after == b"after"
    await pipe.execute("DEL", key)


async def test_a_script_redis_does_not_know_is_sent_once_then_run_by_its_sha(clients: list[Redis]) -> None:
    pipe = pipe_to(clients, REDIS_URL)
    script = f"return 'ran {uuid4().hex}'".encode()  # new to Redis: EVALSHA answers NOSCRIPT
    sha = clients[0].register_script(script).sha

    first = await pipe.evalsha(sha, script, [], [])
    assert await pipe.execute("SCRIPT", "EXISTS", sha) == [1]
    second = await pipe.evalsha(sha, script, [], [])

    assert first == second == script[8:-1]


async def test_it_selects_the_database_of_the_url(clients: list[Redis]) -> None:
    key = f"test-{uuid4().hex}"
    in_db_3 = create_redis(REDIS_URL.rsplit("/", 1)[0] + "/3", 1.0)
    clients.append(in_db_3)
    await in_db_3.set(key, b"in db 3", ex=60)
    pipe = PipelinedRedis.of(in_db_3)
    assert pipe is not None

    assert await pipe.execute("GET", key) == b"in db 3"
    assert await pipe_to(clients, REDIS_URL).execute("GET", key) is None  # db 0


async def test_a_refused_handshake_is_a_redis_error(clients: list[Redis]) -> None:
    pipe = pipe_to(clients, REDIS_URL.replace("redis://", "redis://nobody:wrong-password@"))

    with pytest.raises(RedisError):
        await pipe.execute("PING")


def test_connections_it_does_not_make_are_left_to_redis_py() -> None:
    assert PipelinedRedis.of(Redis.from_url("unix:///tmp/redis.sock")) is None
    assert PipelinedRedis.of(Redis.from_url("rediss://127.0.0.1:6379/0")) is None


async def test_a_server_that_does_not_answer_fails_every_waiting_call_after_the_timeout(
    clients: list[Redis], proxy: Proxy
) -> None:
    pipe = pipe_to(clients, proxy.url(REDIS_URL), timeout=0.2)
    assert await pipe.execute("PING") == b"PONG"
    proxy.cut()
    proxy.restore()
    proxy.hold()  # connections are let in, and nothing comes back

    started = time.monotonic()
    calls = asyncio.gather(*(pipe.execute("PING") for _ in range(5)), return_exceptions=True)
    outcomes = await asyncio.wait_for(calls, 5)  # rather than hang, should the calls never give up

    assert all(isinstance(outcome, RedisTimeoutError) for outcome in outcomes), outcomes
    assert time.monotonic() - started < 2
    proxy.release()
    assert await pipe.execute("PING") == b"PONG"  # on a new connection


async def test_it_connects_again_once_redis_is_back(clients: list[Redis], proxy: Proxy) -> None:
    pipe = pipe_to(clients, proxy.url(REDIS_URL))
    assert await pipe.execute("PING") == b"PONG"

    proxy.cut()  # the connection is dropped, and new ones are refused
    with pytest.raises(RedisConnectionError):
        await pipe.execute("PING")
    proxy.restore()

    assert await pipe.execute("PING") == b"PONG"


async def test_a_command_sent_on_a_connection_just_lost_fails_at_once(clients: list[Redis]) -> None:
    pipe = pipe_to(clients, REDIS_URL, timeout=None)  # no watchdog: a call left waiting would wait forever
    assert await pipe.execute("PING") == b"PONG"
    replies = pipe._replies
    assert replies is not None
    replies.abort()  # as when the connection drops between a caller's check and its send
    await asyncio.sleep(0.01)  # the loss is reported: nothing fails the calls sent from now on but send

    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(replies.send(b"*1\r\n$4\r\nPING\r\n"), 5)
    assert await pipe.execute("PING") == b"PONG"  # on a new connection
