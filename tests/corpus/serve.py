"""Serve a corpus service with uvicorn on a free loopback port, inside the test's loop."""

from __future__ import annotations

import importlib
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType

import uvicorn

WS_MISSING = "ws_missing"


@dataclass(frozen=True)
class Running:
    """A started corpus service."""

    name: str
    faults: frozenset[str]
    base_url: str
    module: ModuleType

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http") :]

    def env(self) -> str:
        """The environment file a user would write for this service."""
        return self.module.ENV.replace("{base_url}", self.base_url)


def load(name: str) -> ModuleType:
    return importlib.import_module(f"corpus.{name}")


@asynccontextmanager
async def serve_corpus(name: str, faults: Iterable[str] = ()) -> AsyncIterator[Running]:
    """Start service ``name`` with ``faults``; yield it; stop it on exit."""
    module = load(name)
    chosen = frozenset(faults)
    unknown = chosen - set(module.FAULTS) - {WS_MISSING}
    if unknown:
        raise ValueError(f"{name} has no fault(s) {sorted(unknown)}")
    app = module.make_app(chosen)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none" if WS_MISSING in chosen else "websockets-sansio",
        timeout_graceful_shutdown=1,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    try:
        port = sock.getsockname()[1]
        yield Running(name, chosen, f"http://127.0.0.1:{port}", module)
    finally:
        # A Socket.IO server runs ping tasks of its own: stop them with it.
        stop_sio = getattr(getattr(app, "engineio_server", None), "shutdown", None)
        if stop_sio is not None:
            await stop_sio()
        await server.shutdown(sockets=[sock])
        sock.close()
