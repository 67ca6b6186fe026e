"""A lean Redis connection for the request path: concurrent requests' commands pipelined on one socket.

The rate limiter's Lua call is the one Redis round trip of nearly every request. Through redis-py's asyncio
client it costs several times the CPU (the connection pool's lock and observability hooks, a task per write
for the socket timeout on Python 3.11, health checks, the retry wrapper) that it costs written to one shared
socket and parsed with hiredis, which redis-py uses too (bench/RESULTS.md, Hand-written parts).
Only that call goes this way (see ``AtomicRedisStore.hit``); everything else uses redis-py.
``bench/profile.py --only S1 --only S1r`` measures what it saves, and
tests/integration/test_redis_pipe_contract.py pins what it relies on in hiredis and redis-py.

Redis answers the commands of a connection in the order it received them, so each call waits on a future
queued in that order. When a call times out the connection is abandoned (its reply may still come and must
not be taken for the next call's): the calls waiting on it fail, and the next call connects again. Failures
raise redis-py's exceptions, so callers handle both clients alike.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from weakref import WeakKeyDictionary

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


class _Replies(asyncio.Protocol):
    """One connection: writes commands and hands each reply to the call that waits for it, in order.

    Commands sent during one turn of the event loop go out in one write at its end (one system call for the
    requests of a burst, rather than one each), and their replies come back in as few reads. A watchdog,
    rather than a timeout per call (a timer each), aborts the connection when the oldest call has
    waited longer than ``timeout``.
    """

    def __init__(self, timeout: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.parser = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # with the time it gives up
        self.unsent: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.failure: type[RedisError] = RedisConnectionError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
            while (reply := self.parser.gets()) is not False:
                waiter, _ = self.waiting.popleft()
                if not waiter.done():  # done: its caller was cancelled
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # not RESP, or a reply no call asked for
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.watchdog is not None:
            self.watchdog.cancel()
        error = self.failure(f"Redis connection lost: {exc or 'closed'}")
        while self.waiting:
            waiter, _ = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        waiter = self.loop.create_future()
        if self.transport is None:  # lost since the caller looked: nothing would ever answer
            waiter.set_exception(self.failure("Redis connection lost"))
            return waiter
        if not self.unsent:
            self.loop.call_soon(self._write)
        self.unsent.append(command)
        if self.timeout is None:
            self.waiting.append((waiter, math.inf))
            return waiter
        self.waiting.append((waiter, self.loop.time() + self.timeout))
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.timeout, self._watch)
        return waiter

    def _write(self) -> None:
        if self.transport is not None:  # else the waiting calls fail in connection_lost
            self.transport.write(b"".join(self.unsent))
        self.unsent.clear()

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiting:
            return
        gives_up = self.waiting[0][1]
        if gives_up <= self.loop.time():
            self.failure = RedisTimeoutError
            self.abort()
        else:
            self.watchdog = self.loop.call_at(gives_up, self._watch)

    def abort(self) -> None:
        """Close at once; the waiting calls fail when the transport reports the loss."""
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class PipelinedRedis:
    """Commands to one Redis server over a single connection per process, pipelined across callers."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float | None,
        connect_timeout: float | None,
        handshake: Sequence[Sequence[Arg]] = (),
    ) -> None:
        self.host, self.port = host, port
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.handshake = [_pack(command) for command in handshake]
        self._replies: _Replies | None = None
        self._connecting: asyncio.Task[_Replies] | None = None

    @classmethod
    def of(cls, client: Redis) -> PipelinedRedis | None:
        """The pipelined connection to ``client``'s server, made once per client; None for connections
        this class doesn't make (TLS, Unix sockets, credential providers): use ``client`` for those."""
        if client not in _pipes:
            _pipes[client] = cls._like(client)
        return _pipes[client]

    @classmethod
    def _like(cls, client: Redis) -> PipelinedRedis | None:
        pool = client.connection_pool
        options = pool.connection_kwargs
        if pool.connection_class is not Connection or options.get("credential_provider") is not None:
            return None
        handshake: list[list[Arg]] = []
        if options.get("password"):
            handshake.append(["AUTH", *filter(None, [options.get("username")]), options["password"]])
        if options.get("db"):
            handshake.append(["SELECT", options["db"]])
        return cls(
            options.get("host", "localhost"),
            options.get("port", 6379),
            timeout=options.get("socket_timeout"),
            connect_timeout=options.get("socket_connect_timeout"),
            handshake=handshake,
        )

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply; a ResponseError reply is raised."""
        command = _pack(args)
        for attempt in (1, 2):
            replies = self._replies
            if replies is None or replies.transport is None:  # like redis-py's, bound to one event loop
                replies = await self._connect()
            try:
                reply = await replies.send(command)
            except RedisConnectionError:
                if attempt == 2:
                    raise
                continue  # closed under it (a Redis restart, say): once more on a new connection
            if isinstance(reply, ResponseError):
                raise reply
            return reply
        raise AssertionError("unreachable")

    async def evalsha(self, sha: str, script: bytes, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run a Lua script by its SHA1, sending its source if Redis doesn't know it (yet, or anymore)."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script, len(keys), *keys, *args)

    def close(self) -> None:
        if self._replies is not None:
            self._replies.abort()
            self._replies = None

    async def _connect(self) -> _Replies:
        """Connect, once for every caller that finds no connection meanwhile."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[_Replies]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:  # the callers that waited got the exception
            self._replies = task.result()

    async def _open(self) -> _Replies:
        loop = asyncio.get_running_loop()
        timeout = self.timeout
        replies: _Replies | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, replies = await loop.create_connection(lambda: _Replies(timeout), self.host, self.port)
                for command in self.handshake:
                    if isinstance(reply := await replies.send(command), ResponseError):
                        raise RedisConnectionError(f"Redis refused the connection: {reply}")
        except BaseException as exc:
            if replies is not None:
                replies.abort()
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"Timeout connecting to {self.host}:{self.port}") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error connecting to {self.host}:{self.port}: {exc}") from exc
            raise
        return replies


def _pack(command: Sequence[Arg]) -> bytes:
    packed: bytes = hiredis.pack_command(cast("Any", tuple(command)))  # its stub types a 1-tuple
    return packed


_pipes: WeakKeyDictionary[Redis, PipelinedRedis | None] = WeakKeyDictionary()


def close_pipelined(client: Redis) -> None:
    """Close the pipelined connection made for ``client``, if any (at shutdown, with the client)."""
    if (pipe := _pipes.get(client)) is not None:
        pipe.close()
