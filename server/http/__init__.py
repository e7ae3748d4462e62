"""The HTTP/JSON front door: the proto3 JSON mapping of the gRPC messages, SSE, the web page."""
from __future__ import annotations

from tessera.server.http.app import build_app
from tessera.server.http.server import HttpServer

__all__ = ["build_app", "HttpServer"]
