"""Python clients for Tessera, sync and asyncio, with typed results.

    with TesseraClient("127.0.0.1:50051") as client:
        gen = client.generate("a small red circle in the top left on a blue background", num_images=2)
        gen.images[0].image.save("best.png")

    async def main():
        async with AsyncTesseraClient("127.0.0.1:50051") as client:
            async for event in client.generate_stream("a red circle", preview_every=16):
                ...   # ProgressEvent(s), then one Generation
    asyncio.run(main())

Several models: a server may serve several, each under its name. `list_models()` lists them
(the first is the one a call without `model` gets); `generate(..., model="mini")`,
`generate_stream(..., model=...)` and `info(model=...)` name one. An unknown name raises
TesseraError with NOT_FOUND and the server's list of the models it serves. A server older
than ListModels answers `list_models()` with its one model, named "" (the name that asks
for it), from GetInfo.

Calls that fail with UNAVAILABLE are retried by gRPC's own retry policy; every other
failure raises TesseraError with the status code and the server's message. A token that
gRPC metadata cannot carry (not printable ASCII, or with whitespace) is a ValueError at
construction, before any call.

Several front ends: the channel balances calls over every address its target resolves to
with gRPC's own `round_robin` policy. Give a DNS name with one record per front end
(`dns:///tessera.prod.svc.cluster.local:50051`, a Kubernetes headless Service), or a comma
list (`10.0.0.5:50051,10.0.0.6:50051`, which becomes gRPC's `ipv4:`/`ipv6:` target).
"""
from __future__ import annotations

import io
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from PIL import Image

from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


class TesseraError(Exception):
    """A failed call: `code` is the gRPC status, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


@dataclass
class GeneratedImage:
    png: bytes
    clip_score: float
    seed: int
    candidate_index: int
    width: int
    height: int

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png)).convert("RGB")


@dataclass
class StageTiming:
    stage: str
    queue_ms: float
    compute_ms: float


@dataclass
class Generation:
    request_id: str
    images: list[GeneratedImage]
    timings: list[StageTiming]
    total_ms: float
    unknown_words: list[str] = field(default_factory=list)  # prompt words the model never learned
    reranked: bool = True   # False: no reranker on the server; sampling order, clip_score 0
    notes: list[str] = field(default_factory=list)  # what the server did to the request, e.g. a prompt cut short


@dataclass
class ProgressEvent:
    stage: str
    completed: int
    total: int
    preview_png: bytes = b""

    @property
    def preview(self) -> Image.Image | None:
        return Image.open(io.BytesIO(self.preview_png)).convert("RGB") if self.preview_png else None


@dataclass
class ServerInfo:
    model_name: str
    image_width: int
    image_height: int
    text_context: int
    limits: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    version: str = ""
    # What the model can draw: {"colors": [("red", "红色"), ...], "shapes": ..., "sizes": ..., "positions": ...}
    vocabulary: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    model_kind: str = ""    # the family: tessera, dalle-pytorch, min-dalle
    image_tokens: int = 0
    tokenizer: str = ""
    rerank: bool = True     # False: images come back in sampling order, unscored
    reranker: str = ""
    details: dict[str, str] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)  # per model OP: "float32", "bfloat16", ...


@dataclass
class ModelStatus:
    """One model a server serves: `name` is what a request's `model` names ("" for a server
    older than ListModels, whose one model every request gets)."""
    name: str
    version: str = ""
    model_kind: str = ""    # the family, as ServerInfo.model_kind
    model_name: str = ""    # as ServerInfo.model_name
    state: str = "serving"
    load_ms: float = 0.0    # how long its load took


def channel_target(target: str) -> str:
    """A comma list of host:port -> gRPC's multi-address target; any other target as given.

    `10.0.0.5:50051,10.0.0.6:50051` -> `ipv4:10.0.0.5:50051,10.0.0.6:50051`; `[::1]:1,[::1]:2` ->
    `ipv6:...`. Host names in a list are resolved once, here (a `dns:///` target re-resolves).
    """
    if "," not in target or ":///" in target or target.startswith(("ipv4:", "ipv6:", "unix:")):
        return target
    v4, v6 = [], []
    for address in (a.strip() for a in target.split(",")):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{address!r} in target {target!r} is not host:port")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:  # a host name: its first address, IPv4 first
            found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            found.sort(key=lambda info: info[0] != socket.AF_INET)
            ip = ipaddress.ip_address(found[0][4][0])
        (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError(f"target {target!r} mixes IPv4 and IPv6 addresses; gRPC takes one family per list")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def _options(retries: int, max_message_bytes: int) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [("grpc.max_receive_message_length", max_message_bytes),
                                         ("grpc.max_send_message_length", max_message_bytes)]
    # round_robin: one subchannel per resolved address, calls spread over the ready ones
    # (gRPC's default, pick_first, sends everything to the first address).
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries <= 0:
        return options + [("grpc.enable_retries", 0), ("grpc.service_config", json.dumps(config))]
    config["methodConfig"] = [{
        "name": [{"service": "tessera.v1.ImageGeneration"}],
        "retryPolicy": {"maxAttempts": retries + 1, "initialBackoff": "0.2s", "maxBackoff": "2s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]
    return options + [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


def _credentials(tls: bool, root_certificates: str | None) -> grpc.ChannelCredentials | None:
    if not tls and not root_certificates:
        return None
    roots = Path(root_certificates).read_bytes() if root_certificates else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def _request(prompt: str, **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=prompt, **{k: v for k, v in kw.items() if v})


def _models(resp: pb.ListModelsResponse) -> list[ModelStatus]:
    return [ModelStatus(m.name, m.version, m.model_kind, m.model_name, m.state, m.load_ms) for m in resp.models]


def _only_model(info: ServerInfo) -> list[ModelStatus]:
    """What a server without ListModels serves: one model, which an empty name asks for."""
    return [ModelStatus("", info.version, info.model_kind, info.model_name)]


def _generation(resp: pb.GenerateResponse) -> Generation:
    return Generation(
        request_id=resp.request_id,
        images=[GeneratedImage(i.png, i.clip_score, i.seed, i.candidate_index, i.width, i.height)
                for i in resp.images],
        timings=[StageTiming(t.stage, t.queue_ms, t.compute_ms) for t in resp.timings],
        total_ms=resp.total_ms,
        unknown_words=list(resp.unknown_words), reranked=resp.reranked, notes=list(resp.notes))


def _event(ev: pb.GenerateEvent) -> ProgressEvent | Generation:
    if ev.HasField("result"):
        return _generation(ev.result)
    p = ev.progress
    return ProgressEvent(p.stage, p.completed, p.total, p.preview_png)


def _info(i: pb.ServerInfo) -> ServerInfo:
    limits = {f.name: getattr(i.limits, f.name) for f in i.limits.DESCRIPTOR.fields}
    defaults = {f.name: getattr(i.defaults, f.name) for f in i.defaults.DESCRIPTOR.fields}
    # The family's own words (ShapesFamily); a server from before it, or a pipeline listing
    # words of its own, sends only the deprecated top-level field.
    words = i.shapes.vocabulary if i.HasField("shapes") else i.vocabulary
    vocabulary = {f.name: [(t.en, t.zh) for t in getattr(words, f.name)] for f in words.DESCRIPTOR.fields}
    return ServerInfo(i.model_name, i.image_width, i.image_height, i.text_context, limits, defaults, i.version,
                      vocabulary, i.model_kind, i.image_tokens, i.tokenizer, i.rerank, i.reranker, dict(i.details),
                      dict(i.precision))


def _checked_token(token: str) -> str:
    """A bearer token travels in an HTTP/2 header: printable ASCII, no whitespace. Anything
    else would fail inside gRPC as INTERNAL on every call, so it is refused here, at once."""
    bad = next((c for c in token if not ("!" <= c <= "~")), None)
    if bad is not None:
        raise ValueError(f"the token holds {bad!r} (U+{ord(bad):04X}); a bearer token must be printable "
                         "ASCII without spaces")
    return token


class _Base:
    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None, tls: bool = False,
                 root_certificates: str | None = None, timeout: float | None = 300.0, retries: int = 3,
                 max_message_bytes: int = 64 * 1024 * 1024):
        self.target, self.timeout = target, timeout
        self._metadata = (("authorization", f"Bearer {_checked_token(token)}"),) if token else ()
        self._creds = _credentials(tls, root_certificates)
        self._options = _options(retries, max_message_bytes)

    def _kw(self, timeout: float | None) -> dict:
        return {"timeout": timeout if timeout is not None else self.timeout, "metadata": self._metadata}


class TesseraClient(_Base):
    """Blocking client."""

    def __init__(self, target: str = DEFAULT_TARGET, **kw):
        super().__init__(target, **kw)
        address = channel_target(target)
        self._channel = (grpc.secure_channel(address, self._creds, self._options) if self._creds
                         else grpc.insecure_channel(address, self._options))
        self._stub = pb_grpc.ImageGenerationStub(self._channel)

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(self, prompt: str, *, model: str = "", timeout: float | None = None, **params) -> Generation:
        try:
            return _generation(self._stub.Generate(_request(prompt, model=model, **params), **self._kw(timeout)))
        except grpc.RpcError as exc:
            raise TesseraError(exc.code(), exc.details()) from None

    def generate_stream(self, prompt: str, *, model: str = "", timeout: float | None = None,
                        **params) -> Iterator[ProgressEvent | Generation]:
        call = self._stub.GenerateStream(_request(prompt, model=model, **params), **self._kw(timeout))
        try:
            for ev in call:
                yield _event(ev)
        except grpc.RpcError as exc:
            raise TesseraError(exc.code(), exc.details()) from None
        finally:
            call.cancel()

    def info(self, *, model: str = "", timeout: float | None = 10.0) -> ServerInfo:
        """The named model's size, limits, defaults and vocabulary ("": the first model)."""
        try:
            return _info(self._stub.GetInfo(pb.GetInfoRequest(model=model), **self._kw(timeout)))
        except grpc.RpcError as exc:
            raise TesseraError(exc.code(), exc.details()) from None

    def list_models(self, *, timeout: float | None = 10.0) -> list[ModelStatus]:
        """The models the server serves, the first (what a call without `model` gets) first."""
        try:
            return _models(self._stub.ListModels(pb.ListModelsRequest(), **self._kw(timeout)))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise TesseraError(exc.code(), exc.details()) from None
        return _only_model(self.info(timeout=timeout))


class AsyncTesseraClient(_Base):
    """asyncio client; one channel, any number of concurrent calls."""

    def __init__(self, target: str = DEFAULT_TARGET, **kw):
        super().__init__(target, **kw)
        address = channel_target(target)
        self._channel = (grpc.aio.secure_channel(address, self._creds, self._options) if self._creds
                         else grpc.aio.insecure_channel(address, self._options))
        self._stub = pb_grpc.ImageGenerationStub(self._channel)

    async def __aenter__(self) -> AsyncTesseraClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(self, prompt: str, *, model: str = "", timeout: float | None = None, **params) -> Generation:
        try:
            return _generation(await self._stub.Generate(_request(prompt, model=model, **params), **self._kw(timeout)))
        except grpc.aio.AioRpcError as exc:
            raise TesseraError(exc.code(), exc.details()) from None

    async def generate_stream(self, prompt: str, *, model: str = "", timeout: float | None = None,
                              **params) -> AsyncIterator[ProgressEvent | Generation]:
        call = self._stub.GenerateStream(_request(prompt, model=model, **params), **self._kw(timeout))
        try:
            async for ev in call:
                yield _event(ev)
        except grpc.aio.AioRpcError as exc:
            raise TesseraError(exc.code(), exc.details()) from None
        finally:
            call.cancel()

    async def info(self, *, model: str = "", timeout: float | None = 10.0) -> ServerInfo:
        """The named model's size, limits, defaults and vocabulary ("": the first model)."""
        try:
            return _info(await self._stub.GetInfo(pb.GetInfoRequest(model=model), **self._kw(timeout)))
        except grpc.aio.AioRpcError as exc:
            raise TesseraError(exc.code(), exc.details()) from None

    async def list_models(self, *, timeout: float | None = 10.0) -> list[ModelStatus]:
        """The models the server serves, the first (what a call without `model` gets) first."""
        try:
            return _models(await self._stub.ListModels(pb.ListModelsRequest(), **self._kw(timeout)))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise TesseraError(exc.code(), exc.details()) from None
        return _only_model(await self.info(timeout=timeout))
