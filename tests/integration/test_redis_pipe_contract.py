"""What app/storage/redis_pipe.py relies on in hiredis and redis-py: should either change, these fail.

- hiredis' ``Reader`` (``feed``, ``gets`` answering False until a reply is whole, an error reply returned as
  an instance of ``replyError`` rather than raised, RESP types as Python types) and ``pack_command``;
- redis-py's connection pool exposing the connection settings ``PipelinedRedis.of`` copies;
- the rate limiter's script answering the same, to the Python type, through either connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import hiredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from app.storage.redis import create_redis
from app.storage.redis_pipe import PipelinedRedis, close_pipelined
from app.storage.stores import AtomicRedisStore
from tests.support import REDIS_URL


def test_hiredis_reader_hands_back_whole_replies_only_and_errors_as_values() -> None:
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(b"*4\r\n:1\r\n$3\r\nabc\r\n$-1\r\n")
    assert reader.gets() is False  # the array isn't whole yet

    reader.feed(b"*1\r\n:-2\r\n-NOSCRIPT No matching script\r\n+OK\r\n")
    whole, error, status = reader.gets(), reader.gets(), reader.gets()

    assert whole == [1, b"abc", None, [-2]]
    assert isinstance(error, ResponseError)
    assert str(error).startswith("NOSCRIPT")
    assert status == b"OK"
    assert reader.gets() is False


def test_hiredis_reader_refuses_what_is_not_resp() -> None:
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(hiredis.ProtocolError):
        reader.gets()


def test_hiredis_packs_commands_as_resp_arrays_of_bulk_strings() -> None:
    packed = hiredis.pack_command(("EVALSHA", b"sha", 1, 2.5))  # type: ignore[arg-type]  # stub: a 1-tuple
    assert packed == b"*4\r\n$7\r\nEVALSHA\r\n$3\r\nsha\r\n$1\r\n1\r\n$3\r\n2.5\r\n"


def test_redis_py_pool_exposes_the_settings_the_pipelined_connection_copies() -> None:
    client = create_redis("redis://someone:secret@redis.example:6380/3", 0.25)
    pool = client.connection_pool

    assert pool.connection_class is Connection
    settings = pool.connection_kwargs
    assert (settings["host"], settings["port"], settings["db"]) == ("redis.example", 6380, 3)
    assert (settings["username"], settings["password"]) == ("someone", "secret")
    assert settings["socket_timeout"] == settings["socket_connect_timeout"] == 0.25
    assert settings.get("credential_provider") is None


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = create_redis(REDIS_URL, 1.0)
    yield client
    close_pipelined(client)
    await client.aclose()


async def test_the_limiters_script_answers_alike_through_redis_py_and_the_pipelined_connection(
    redis: Redis,
) -> None:
    namespace = f"test-{uuid4().hex}"
    through_pipe = AtomicRedisStore(redis, namespace)
    through_redis_py = AtomicRedisStore(redis, namespace, pipelined=False)
    assert PipelinedRedis.of(redis) is not None  # else both would go through redis-py
    await redis.set(f"{namespace}:present", b"value", ex=60)
    read = [f"{namespace}:present", f"{namespace}:absent"]
    also = [(f"{namespace}:other", 60)]

    try:
        windows = [
            await store.hit(f"client-{n}", 60, read, also)
            for n, store in enumerate((through_redis_py, through_pipe))
        ]
    finally:
        await through_pipe.delete_all()

    first, second = windows
    assert (first.requests, second.requests) == (1, 1)
    assert first.read == second.read == {read[0]: b"value", read[1]: None}
    assert {type(first.resets_in), type(second.resets_in)} == {int}
    assert first.also[0][0] == 1
    assert second.also[0][0] == 2  # the same window, counted by each
