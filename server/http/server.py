"""uvicorn inside Tessera's own event loop, on a socket bound before the models load.

    http = HttpServer("127.0.0.1", 0)   # binds now: OSError if the port is taken
    await http.start(app)                # the port is http.port
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
    def __init__(self, host: str, port: int, *, tls: tuple[str, str] | None = None, graceful_s: float = 2.0):
        self._tls, self._graceful_s = tls, graceful_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free; a listener is not
            sock.bind((host.strip("[]"), port))
            sock.listen(1024)  # connections queue here until uvicorn accepts them
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        self.port: int = sock.getsockname()[1]
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self, app) -> None:
        cert, key = self._tls or (None, None)
        # h11, the parser a plain install has: uvicorn would switch to httptools wherever
        # something else installed it (LitServe, the benchmark's dependency, does), so tests and users
        # would run different parsers.
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", http="h11",
                                timeout_graceful_shutdown=self._graceful_s, ssl_certfile=cert, ssl_keyfile=key)
        # Its start/stop lines repeat what `tessera serve` prints; its errors still show.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="tessera-http")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._socket.close()
