"""The composition root: the models (an engine each) + gRPC server + HTTP front door + health +
reflection + metrics + the admin API (`server.admin`).

    server = TesseraServer(AppConfig.from_dict(DEFAULT_CONFIG))
    port = await server.start()
    ...
    await server.stop()          # stop admitting, drain, then close
"""
from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from tessera.server.config import AppConfig
from tessera.server.engine import ConfigError, Engine
from tessera.server.http import HttpServer, build_app
from tessera.server.models import ModelSet, model_info
from tessera.server.rpc.admin import ModelAdmin
from tessera.server.rpc.auth import BearerTokenInterceptor, load_token
from tessera.server.rpc.interceptors import CallCounter, FrontDoorInterceptor
from tessera.server.rpc.mapping import PipelineMapping
from tessera.server.rpc.service import GenerationService
from tessera.server.rpc.servicer import ImageGenerationServicer, ModelControlServicer
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc

log = logging.getLogger("tessera.server")
SERVICE = pb.DESCRIPTOR.services_by_name["ImageGeneration"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["ModelControl"].full_name


class PortInUse(Exception):
    """A port the server was told to bind is taken (or cannot be bound)."""

    def __init__(self, host: str, port: int, what: str, cause: BaseException):
        super().__init__(f"cannot listen for {what} on {host}:{port}: the port is in use or not available "
                         f"({cause}); stop the other server or choose another port")
        self.host, self.port = host, port


def precision_text(precision: dict[str, str]) -> str:
    """GetInfo's precision map as the start-up lines say it: "sample bfloat16, decode bfloat16"."""
    return ", ".join(f"{op} {dtype}" for op, dtype in precision.items())


class TesseraServer:
    def __init__(self, config: AppConfig, *, tracer_provider=None):
        """`tracer_provider`: an OpenTelemetry TracerProvider to trace with (tests pass one with
        an in-memory exporter); None: the `tracing` section's (tracing.py), if tracing is on."""
        self.config = config
        self._tracer_provider = tracer_provider
        self._own_provider = False
        self.registry = CollectorRegistry()  # every model's engine and the front door count here
        self.models = ModelSet(config, self.registry)
        self.models.on_engine.append(self._trace)
        self.service: GenerationService | None = None
        self.calls: CallCounter | None = None
        self._front: FrontDoorInterceptor | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self._http: HttpServer | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_http = None
        self._health_tasks: set[asyncio.Task] = set()

    @property
    def engine(self) -> Engine | None:
        """The first model's engine (what a server of one model runs)."""
        return next((m.engine for m in self.models), None)

    async def start(self) -> int:
        """Bind the port, load the models, serve; PortInUse or ConfigError before any model loads."""
        s = self.config.server
        token = load_token(s.token_file, s.token_env)
        for i, graph in enumerate(self.config.graphs):
            try:  # each graph's first and output OPs map requests and responses: checked before any model loads
                PipelineMapping.of(graph)
            except ConfigError as exc:
                raise ConfigError(f"models.{i}.graph.{exc.key}" if i else f"graph.{exc.key}", exc.message) from None
        limit = s.limits.max_message_bytes
        self.calls = CallCounter(self.registry)
        self._front = FrontDoorInterceptor(self.calls, limit)
        interceptors = [self._front]  # outermost: sees every call's end
        if token:
            interceptors.append(BearerTokenInterceptor(token, exempt_health=s.auth_exempt_health))
        self._grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     # gRPC sets SO_REUSEPORT by default: a second server on a busy port would
                     # share it silently. Off, binding a port in use fails and says so.
                     ("grpc.so_reuseport", 0)])
        self.port = self._bind(s)
        if s.http_port >= 0:
            try:
                self._http = HttpServer(s.host, s.http_port,
                                        tls=(s.tls_cert_file, s.tls_key_file) if s.tls_cert_file else None)
            except OSError as exc:
                raise PortInUse(s.host, s.http_port, "HTTP", exc) from None
            self.http_port = self._http.port
        await self.models.start()
        gc.freeze()  # models and modules loaded: later collections skip them
        info = self.models.get("").info
        self.service = GenerationService(self.models, s.limits)
        admin = ModelAdmin(self.models) if s.admin else None
        pb_grpc.add_ImageGenerationServicer_to_server(ImageGenerationServicer(self.service), self._grpc)
        if admin is not None:
            pb_grpc.add_ModelControlServicer_to_server(ModelControlServicer(admin), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE, *([ADMIN_SERVICE] if admin else []),
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._grpc)
        await self._grpc.start()
        # SERVING while at least one model serves: NOT_SERVING while every model has an OP with
        # no live worker (one died and its replacement is starting), or none is loaded.
        self.models.on_health_change(self._on_engine_health)
        await self._set_health(self.models.serving)
        if self._http is not None:
            await self._http.start(build_app(self.service, token=token, health=self.serving, calls=self.calls,
                                             admin=admin))
        if s.metrics_port >= 0:
            try:
                self._metrics_http, _ = start_http_server(s.metrics_port, addr=s.host, registry=self.registry)
            except OSError as exc:
                raise PortInUse(s.host, s.metrics_port, "metrics", exc) from None
            self.metrics_port = self._metrics_http.server_port
        log.info("serving %s on %s:%d (HTTP %s, auth %s, tls %s, admin %s; precision %s)",
                 ", ".join(m.name for m in self.models), s.host, self.port,
                 self.http_port if self._http else "off", "on" if token else "off",
                 "on" if s.tls_cert_file else "off", "on" if admin else "off",
                 precision_text(info["precision"]) or "none")
        return self.port

    def _trace(self, engine: Engine, graph) -> None:
        """Subscribe each model's engine's tracing observer when tracing is on (nothing of the
        SDK is imported when it is off)."""
        provider = self._tracer_provider
        if provider is None:
            from tessera.server.tracing import endpoint_of
            if endpoint_of(self.config.tracing) is None:
                return
            from tessera.server.tracing import start_tracing
            provider = self._tracer_provider = start_tracing(self.config.tracing)
            self._own_provider = True
        from tessera.server.tracing import TraceObserver
        info = model_info(graph)
        engine.observers.add(TraceObserver(provider.get_tracer("tessera"), model=engine.name or info["name"],
                                           precision=info["precision"]))

    async def _lull(self, quiet_s: float = 0.1, at_most_s: float = 2.0) -> None:
        """Wait until no call has arrived for `quiet_s` (at most `at_most_s`): calls already on
        the wire then reach a handler and hear UNAVAILABLE, where gRPC's close would reset
        them (CANCELLED) before any handler saw them."""
        if self._front is None:
            return
        start = time.monotonic()  # the drain just answered its last calls: their callers may send more
        while (time.monotonic() < start + at_most_s
               and time.monotonic() - max(start, self._front.last_call) < quiet_s):
            await asyncio.sleep(quiet_s / 2)

    def serving(self) -> bool:
        """What readiness reports on HTTP, as health does on gRPC: some model admits requests
        and each of its OPs has a live worker (false while draining or while every model has
        a worker being replaced)."""
        return self.models.serving

    def _on_engine_health(self, serving: bool) -> None:
        task = asyncio.ensure_future(self._set_health(serving))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self._health.set(name, status)

    def _bind(self, s) -> int:
        address = f"{s.host}:{s.port}"
        _check_free(s.host, s.port)  # grpc would say it too, but in a C-core log line of its own
        try:
            if s.tls_cert_file:
                creds = grpc.ssl_server_credentials(
                    [(Path(s.tls_key_file).read_bytes(), Path(s.tls_cert_file).read_bytes())])
                return self._grpc.add_secure_port(address, creds)
            return self._grpc.add_insecure_port(address)
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            raise PortInUse(s.host, s.port, "gRPC", exc) from None

    async def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM's path: report NOT_SERVING, refuse new work, drain in-flight, close."""
        await self._health.enter_graceful_shutdown()
        # The engine drains while gRPC still answers: a call that comes meanwhile gets a clear
        # UNAVAILABLE from the engine (a stopped gRPC server resets late streams: CANCELLED).
        await self.models.stop(grace_s)  # each engine drains (None: its graph's shutdown_grace_s)
        if self._grpc is not None:
            await self._lull()
            await self._grpc.stop(1.0)
        if self._http is not None:
            await self._http.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self._own_provider and self._tracer_provider is not None:
            # The spans still batched go out (off the loop: the export may wait on the network).
            await asyncio.get_running_loop().run_in_executor(None, self._tracer_provider.shutdown)


def _check_free(host: str, port: int) -> None:
    """PortInUse when something already listens on host:port (port 0 picks a free one)."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # grpc reports a name it cannot resolve
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds: TIME_WAIT is free
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise PortInUse(host, port, "gRPC", exc) from None
