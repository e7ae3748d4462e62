"""The composition root: engine + gRPC server + health + reflection + metrics.

    server = TesseraServer(AppConfig.from_dict(DEFAULT_CONFIG))
    port = await server.start()
    ...
    await server.stop()          # stop admitting, drain, then close
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from tessera.server.config import AppConfig
from tessera.server.engine import Engine
from tessera.server.rpc.auth import BearerTokenInterceptor, load_token
from tessera.server.rpc.service import GenerationService
from tessera.server.rpc.servicer import ImageGenerationServicer
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc

log = logging.getLogger("tessera.server")
SERVICE = pb.DESCRIPTOR.services_by_name["ImageGeneration"].full_name


class TesseraServer:
    def __init__(self, config: AppConfig):
        self.config = config
        self.engine: Engine | None = None
        self.service: GenerationService | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_http = None

    def model_info(self) -> dict:
        from tessera.ops.info import describe_model  # reads config.json only
        dirs = [op.settings.get("model_dir") for op in self.config.graph.ops.values()]
        return describe_model(next((d for d in dirs if d), self.config.model_dir))

    async def start(self) -> int:
        s = self.config.server
        token = load_token(s.token_file, s.token_env)
        self.engine = Engine(self.config.graph)
        await self.engine.start()
        gc.freeze()  # models and modules loaded: later collections skip them
        limit = s.limits.max_message_bytes
        self._grpc = grpc.aio.server(
            interceptors=[BearerTokenInterceptor(token)] if token else [],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
        info = self.model_info()
        self.service = GenerationService(self.engine, s.limits, info)
        pb_grpc.add_ImageGenerationServicer_to_server(ImageGenerationServicer(self.service), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._grpc)
        address = f"{s.host}:{s.port}"
        if s.tls_cert_file:
            creds = grpc.ssl_server_credentials(
                [(Path(s.tls_key_file).read_bytes(), Path(s.tls_cert_file).read_bytes())])
            self.port = self._grpc.add_secure_port(address, creds)
        else:
            self.port = self._grpc.add_insecure_port(address)
        await self._grpc.start()
        for name in ("", SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port >= 0:
            self._metrics_http, _ = start_http_server(s.metrics_port, addr=s.host,
                                                      registry=self.engine.metrics.registry)
            self.metrics_port = self._metrics_http.server_port
        log.info("serving %s on %s:%d (auth %s, tls %s)", info["name"], s.host, self.port,
                 "on" if token else "off", "on" if s.tls_cert_file else "off")
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM's path: report NOT_SERVING, refuse new work, drain in-flight, close."""
        await self._health.enter_graceful_shutdown()
        if self.engine is not None:
            await self.engine.stop(grace_s)  # None: the graph's shutdown_grace_s
        if self._grpc is not None:
            await self._grpc.stop(1.0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
