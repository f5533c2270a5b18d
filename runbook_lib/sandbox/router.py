"""Traffic router on the sandbox service URL: a raw asyncio TCP proxy.

It plays the part of Cloud Run's front end. For every new client connection it
reads the HTTP/1.1 request head (bounded in size and time), asks ``choose()``
which revision serves it (the daemon implements the traffic split there), and
then splices bytes both ways untouched, so HTTP responses, WebSocket upgrades,
frames and close codes pass through exactly as the revision produced them, and
a revision that drops its TCP connection drops the client's too.

Only the first request head of a connection is inspected: a revision is chosen
per connection, as Cloud Run does for HTTP/1.1 keep-alive and WebSocket traffic.

Revision tags (Cloud Run's ``https://TAG---SERVICE-HASH-REGION.a.run.app``) get one
loopback listener each (:class:`TagListeners`): a plain ``http://127.0.0.1:PORT``
URL that any HTTP or WebSocket client can use as is, reaching only the tagged
revision, whatever the traffic split says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Router", "TagListeners", "Upstream", "strip_upgrade_headers"]

logger = logging.getLogger(__name__)

_HEAD_END = b"\r\n\r\n"
_CHUNK = 256 * 1024  # large reads keep per-byte Python work negligible
_REQUEST_LINE = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/1\.[01]$")
_HEADER_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One revision instance the router may send a connection to."""

    host: str
    port: int
    revision: str
    # Emulates a front end that drops hop-by-hop Upgrade/Connection headers.
    strip_upgrade: bool = False


def _response(status: int, reason: str, body: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + payload


def _parse_head(head: bytes) -> bool:
    """Return True when ``head`` is a well-formed HTTP/1.x request head."""
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    if not lines or not _REQUEST_LINE.match(lines[0]):
        return False
    for line in lines[1:]:
        name, sep, _ = line.partition(b":")
        if not sep or not _HEADER_NAME.match(name):
            return False
    return True


def strip_upgrade_headers(head: bytes) -> bytes:
    """Remove ``Upgrade`` and the ``upgrade`` token of ``Connection`` from a request head.

    This is what a proxy that treats them as plain hop-by-hop headers does: the
    backend then sees an ordinary GET.
    """
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"upgrade":
            continue
        if key == b"connection":
            tokens = [t.strip() for t in value.split(b",")]
            tokens = [t for t in tokens if t and t.lower() != b"upgrade"]
            if not tokens:
                continue
            line = name + b": " + b", ".join(tokens)
        kept.append(line)
    return b"\r\n".join(kept) + _HEAD_END


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> bool:
    """Copy until EOF. Returns True on a clean EOF, False when either side broke."""
    try:
        while True:
            data = await src.read(_CHUNK)
            if not data:
                return True
            dst.write(data)
            await dst.drain()  # backpressure: never buffer more than the peer takes
    except (ConnectionError, OSError):
        return False


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


class Router:
    """Raw TCP proxy that routes each new client connection to one upstream revision.

    Args:
        choose: called once per new client connection (after its request head is
            read); returns the upstream, or None when no revision is ready.
        head_timeout_s: time allowed for the client to send its request head.
        connect_timeout_s: time allowed to connect to the upstream.
        max_head_bytes: largest request head accepted (larger: 400).
        request_timeout_s: longest life of one proxied connection, like Cloud Run's
            request timeout (None: unbounded).
        half_close_grace_s: after one side finished cleanly, how long the other
            direction may still flow.
    """

    def __init__(
        self,
        choose: Callable[[], Upstream | None],
        *,
        head_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_head_bytes: int = 64 * 1024,
        request_timeout_s: float | None = 3600.0,
        half_close_grace_s: float = 5.0,
    ) -> None:
        self._choose = choose
        self._head_timeout_s = head_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_head_bytes = max_head_bytes
        self._request_timeout_s = request_timeout_s
        self._grace_s = half_close_grace_s
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._stats: dict[str, int] = {}
        self._rejected = 0
        self._bad_requests = 0
        self.port: int | None = None

    @property
    def stats(self) -> dict[str, int]:
        """Connections routed so far, per revision name (a copy)."""
        return dict(self._stats)

    @property
    def rejected(self) -> int:
        """Connections answered 503 (no upstream, or the upstream refused)."""
        return self._rejected

    @property
    def bad_requests(self) -> int:
        """Connections answered 400 (malformed, oversized or timed-out request head)."""
        return self._bad_requests

    @property
    def active(self) -> int:
        """Client connections currently open through the router."""
        return len(self._handlers)

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> int:
        """Listen on ``host:port`` (0 = a free port), or on a bound ``sock``; return the port."""
        if self._server is not None:
            raise RuntimeError("router already started")
        if sock is not None:
            self._server = await asyncio.start_server(
                self._handle, sock=sock, limit=self._max_head_bytes
            )
        else:
            self._server = await asyncio.start_server(
                self._handle, host, port, limit=self._max_head_bytes, backlog=4096
            )
        sockets = self._server.sockets
        self.port = int(sockets[0].getsockname()[1])
        logger.info("router listening on %s:%s", host, self.port)
        return self.port

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening and drop every proxied connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=timeout_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout_s)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            _abort(writer)
            raise
        except Exception:  # one broken connection must never take the router down
            logger.exception("router connection failed")
            _abort(writer)
        finally:
            if task is not None:
                self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        with contextlib.suppress(Exception):
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self._connect_timeout_s)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(_HEAD_END), self._head_timeout_s)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                self._bad_requests += 1
                await self._reply(writer, _response(400, "Bad Request", {"error": "bad request"}))
            return  # otherwise the client connected and left: nothing to answer
        except (asyncio.LimitOverrunError, ValueError):
            self._bad_requests += 1
            await self._reply(
                writer, _response(400, "Bad Request", {"error": "request head too large"})
            )
            return
        except TimeoutError:
            self._bad_requests += 1
            await self._reply(
                writer, _response(400, "Bad Request", {"error": "request head timed out"})
            )
            return
        except (ConnectionError, OSError):
            return
        if not _parse_head(head):
            self._bad_requests += 1
            await self._reply(writer, _response(400, "Bad Request", {"error": "malformed request"}))
            return

        try:
            upstream = self._choose()
        except Exception:
            logger.exception("router choose() failed")
            upstream = None
        if upstream is None:
            self._rejected += 1
            await self._reply(
                writer,
                _response(503, "Service Unavailable", {"error": "no ready instance"}),
            )
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port, limit=_CHUNK),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            self._rejected += 1
            logger.warning("upstream %s refused: %s", upstream.revision, exc)
            await self._reply(
                writer,
                _response(
                    503,
                    "Service Unavailable",
                    {"error": "no ready instance", "revision": upstream.revision},
                ),
            )
            return
        self._stats[upstream.revision] = self._stats.get(upstream.revision, 0) + 1
        try:
            up_writer.write(strip_upgrade_headers(head) if upstream.strip_upgrade else head)
            await self._splice(reader, writer, up_reader, up_writer)
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()

    async def _splice(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        to_upstream = asyncio.ensure_future(_pipe(reader, up_writer))
        to_client = asyncio.ensure_future(_pipe(up_reader, writer))
        pending: set[asyncio.Future[bool]] = {to_upstream, to_client}
        try:
            done, pending = await asyncio.wait(
                pending, timeout=self._request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # request timeout reached: cut both sides, like Cloud Run does
                _abort(writer)
                _abort(up_writer)
                return
            if to_client in done:
                # The revision finished or dropped the connection: the client's goes too,
                # gracefully (FIN) after a clean EOF, abruptly after a reset.
                if not to_client.result():
                    _abort(writer)
                return
            # The client finished first.
            if not to_upstream.result():
                _abort(up_writer)
                return
            with contextlib.suppress(Exception):
                if up_writer.can_write_eof():
                    up_writer.write_eof()
            # Let the response to a half-closed request still flow, briefly.
            _, pending = await asyncio.wait(pending, timeout=self._grace_s)
        finally:
            for fut in pending:
                fut.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


class TagListeners:
    """One loopback listener per revision tag, each a :class:`Router` of its own.

    :meth:`open` is synchronous and returns the URL at once: the socket is bound
    and listening before the router accepts, so a client that connects early
    waits in the backlog instead of being refused. ``choose`` is asked per
    connection, so a tag moved to another revision keeps its URL.

    Args:
        host: the loopback address to bind.
        router_options: passed to every :class:`Router`.
    """

    def __init__(self, host: str = "127.0.0.1", **router_options: Any) -> None:
        self.host = host
        self._options = router_options
        self._routers: dict[str, tuple[Router, str, asyncio.Task[int]]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def urls(self) -> dict[str, str]:
        """Key -> URL of every open listener."""
        return {key: url for key, (_, url, _) in self._routers.items()}

    def open(self, key: str, choose: Callable[[], Upstream | None]) -> str:
        """Listen for ``key`` (no-op when already open) and return its ``http://`` URL.

        Must be called from the running event loop.
        """
        if key in self._routers:
            return self._routers[key][1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        url = f"http://{self.host}:{sock.getsockname()[1]}"
        router = Router(choose, **self._options)
        task = asyncio.get_running_loop().create_task(router.start(sock=sock))
        self._routers[key] = (router, url, task)
        logger.info("tag listener %s on %s", key, url)
        return url

    def close(self, key: str) -> None:
        """Stop listening for ``key`` (in the background; no-op when not open)."""
        entry = self._routers.pop(key, None)
        if entry is None:
            return
        task = asyncio.get_running_loop().create_task(self._stop(*entry))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _stop(router: Router, url: str, started: asyncio.Task[int]) -> None:
        with contextlib.suppress(Exception):
            await started
        await router.stop()
        logger.info("tag listener on %s closed", url)

    async def aclose(self) -> None:
        """Stop every listener and wait for them to go."""
        for key in list(self._routers):
            self.close(key)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=10)
