"""uvicorn inside Tessera's own event loop, on a socket bound before it starts.

    http = HttpServer(app, "127.0.0.1", 0)
    port = await http.start()       # bound and listening: the port is known at once
    ...
    await http.stop()
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # `tessera serve` owns SIGTERM/SIGINT (stop admitting, drain, then close); uvicorn
        # must not take them over or re-raise them after it stops.
        yield


class HttpServer:
    def __init__(self, app, host: str, port: int, *, tls: tuple[str, str] | None = None, graceful_s: float = 2.0):
        cert, key = tls or (None, None)
        self._config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                      timeout_graceful_shutdown=graceful_s, ssl_certfile=cert, ssl_keyfile=key)
        self._host, self._port = host, port
        # Its start/stop lines repeat what `tessera serve` prints; its errors still show.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"HTTP port {self._host}:{self._port}: {exc.strerror}") from None
        sock.listen(1024)  # connections queue here until uvicorn accepts them
        sock.setblocking(False)
        self._socket = sock
        self._server = _EmbeddedServer(self._config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="tessera-http")
        return sock.getsockname()[1]

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._socket.close()
