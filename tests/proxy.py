"""A TCP proxy in front of a real service, for tests in which the service goes away and comes back.

The proxy runs its own event loop in a thread, so that a test may block (waiting for a process, say) while
traffic keeps flowing. Nothing is faked: bytes go to the real PostgreSQL or RabbitMQ, or nowhere.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tests.support import free_port

T = TypeVar("T")


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``.

    ``cut()`` drops every open connection and closes the port, so new connections are refused, until
    ``restore()``. ``hold()`` lets connections in but forwards nothing, on new connections or open ones, until
    ``release()``: a host that stopped answering without closing anything.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._released = asyncio.Event()
        self._released.set()

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self) -> None:
        self._thread.start()
        self.restore()

    def restore(self) -> None:
        async def listen() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._call(listen())

    def cut(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

        self._call(close())

    def hold(self) -> None:
        self._loop.call_soon_threadsafe(self._released.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._released.set)

    def stop(self) -> None:
        self.cut()
        self._call(_end_connections())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._open.add(client_writer)
        try:
            await self._released.wait()
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._open.add(server_writer)
        await asyncio.gather(
            _pipe(client_reader, server_writer, self._released),
            _pipe(server_reader, client_writer, self._released),
            return_exceptions=True,
        )
        for writer in (client_writer, server_writer):
            self._open.discard(writer)
            writer.transport.abort()


async def _end_connections() -> None:
    """End the connections still held or being forwarded with the proxy, rather than leave them pending
    when its loop closes (an error about a destroyed task then, or a connection attempt on a closed loop)."""
    this = asyncio.current_task()
    handling = [task for task in asyncio.all_tasks() if task is not this]
    for task in handling:
        task.cancel()
    await asyncio.gather(*handling, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, released: asyncio.Event) -> None:
    with suppress(OSError):
        while data := await reader.read(65536):
            await released.wait()
            writer.write(data)
            await writer.drain()
    writer.transport.abort()  # one side gone: the other goes too, as with a broken network path


@contextmanager
def proxy_to(url: str) -> Iterator[Proxy]:
    """A running proxy to the host and port of ``url`` (a service URL such as ``amqp://…``)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    proxy = Proxy(parts.hostname, parts.port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
