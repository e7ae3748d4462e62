"""The server's configuration: a `server` section, the `model`, the engine's `graph`, `tracing`.

    config = AppConfig.from_dict(yaml.safe_load(path.read_text()))

Typed pydantic models, validated once at start-up; every mistake is a ConfigError naming
the key. docs/configuration.md is generated from these models (`tessera config --docs`) and
`tessera config --schema` prints the JSON Schema an editor checks a YAML file against.
"""
from __future__ import annotations

import copy
from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from tessera.server.defaults import DEFAULT_CONFIG
from tessera.server.engine import ConfigError, GraphConfig
from tessera.server.engine.config import Section, resolve_op_type
from tessera.server.engine.platforms import DTYPES
from tessera.server.engine.settings import invalid

MiB = 1024 * 1024
Int32 = 2**31 - 1
Port = Annotated[int, Field(ge=0, le=65535)]
# A port, 0 to pick a free one, or -1 to turn the listener off.
OptionalPort = Annotated[int, Field(ge=-1, le=65535)]
Path = Annotated[str, Field(min_length=1, pattern=r"\S")]


class Limits(Section):
    """What one request may ask for (`server.limits`); larger requests are refused as invalid."""
    max_num_images: int = Field(16, ge=1, le=Int32)
    """Most images one request may ask for."""
    max_num_candidates: int = Field(64, ge=1, le=Int32)
    """Most candidates one request may sample (the best num_images of them come back)."""
    max_prompt_chars: int = Field(1000, ge=1, le=Int32)
    """Longest prompt, in characters."""
    max_message_bytes: int = Field(16 * MiB, ge=1, le=Int32)
    """Largest gRPC message either way, in bytes."""


class ServerConfig(Section):
    """The front doors (`server:`): where gRPC, HTTP and metrics listen, auth and TLS."""
    host: str = Field("127.0.0.1", min_length=1)
    """Address every listener binds (0.0.0.0: every interface)."""
    port: Port = 50051
    """gRPC port; 0 picks a free one."""
    metrics_port: OptionalPort = 9090
    """Prometheus metrics port; 0 picks a free one, -1 turns metrics off."""
    http_port: OptionalPort = 8080
    """HTTP/JSON, SSE and the web page; 0 picks a free port, -1 turns them off."""
    token_file: Path | None = None
    """A file holding the bearer token callers must send; auth is off unless this or token_env is set."""
    token_env: Path | None = None
    """An environment variable holding the bearer token (read at start-up; empty is an error)."""
    auth_exempt_health: bool = True
    """Health checks need no token (Kubernetes probes send none)."""
    tls_cert_file: Path | None = None
    """TLS certificate chain (PEM); with tls_key_file, every listener serves TLS."""
    tls_key_file: Path | None = None
    """TLS private key (PEM) of tls_cert_file."""
    limits: Limits = Field(default_factory=Limits)
    """What one request may ask for."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise invalid("TLS needs both tls_cert_file and tls_key_file", "tls_cert_file")
        return self


def _arch_path(value: str | None) -> str | None:
    if value is not None and ":" not in value:
        raise invalid(f"must be ARCH:PATH (e.g. ViT-B-32:/models/clip.bin), got {value!r}")
    return value


# The `model` section's keys -> the model OPs' settings they fill in (ops/shared.py, ModelSettings).
MODEL_KEYS = {"path": "model_dir", "bpe_path": "bpe_path", "vae": "vae_path", "clip": "clip", "dtype": "dtype"}


class ModelConfig(Section):
    """Which model to serve (`model:`, or `model: PATH`; on the command line `tessera serve
    --model`, `--bpe-path`, `--vae`, `--clip`). Every OP whose settings have these keys gets
    them unless it sets its own."""
    path: Path | None = None
    """A Tessera model directory, a DALLE-pytorch .pt, or min-dalle's directory; null: the
    bundled shapes model."""
    bpe_path: Path | None = None
    """DALLE-pytorch: CLIP's BPE merges (plain or .gz) or a tokenizers JSON."""
    vae: Path | None = None
    """DALLE-pytorch: a separately trained DiscreteVAE (train_vae.py's file)."""
    clip: Annotated[Path | None, AfterValidator(_arch_path)] = Field(
        None, json_schema_extra={"pattern": "^[^:]+:.+$"})
    """ARCH:PATH, a local OpenCLIP checkpoint that reranks (e.g. ViT-B-32:/models/clip.bin)."""
    dtype: Literal[DTYPES] | None = None  # platforms.DTYPES: the model OPs' own setting takes the same
    """The precision of every model OP that does not set its own `dtype` (`tessera serve --dtype`
    sets it for every one): auto is each device's choice (docs/models.md, Precision); float32
    reproduces the families' own projects exactly."""


class TracingConfig(Section):
    """OpenTelemetry traces (`tracing:`): a span per request and per stage, exported over OTLP
    (docs/tracing.md). Off unless an endpoint is set here, by `tessera serve
    --otlp-traces-endpoint`, or by OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT);
    needs `pip install 'tessera[otel]'`. The other standard OTEL_* variables (protocol, batch
    delay, resource attributes) are the SDK's."""
    otlp_traces_endpoint: Annotated[str, Field(min_length=1)] | None = None
    """Where spans go, e.g. http://localhost:4317 (OTLP/gRPC); null: the OTEL_EXPORTER_OTLP_*
    variables, or tracing off."""
    sample_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    """The share of requests without a caller's traceparent that start a sampled trace (0: only
    the callers' sampled traces are followed, as in Triton); null: OTEL_TRACES_SAMPLER(_ARG),
    by default every trace."""
    service_name: Annotated[str, Field(min_length=1)] | None = None
    """service.name of the spans; null: OTEL_SERVICE_NAME, else tessera."""


class AppConfig(Section):
    """The whole configuration file: `model`, `server` and `graph`. (`model: PATH` is short for
    `model: {path: PATH}`.)"""
    legacy_model_dir: Path | None = Field(None, alias="model_dir")
    """The older spelling of `model.path` (keep one of the two)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Which model to serve."""
    server: ServerConfig = Field(default_factory=ServerConfig)
    """The front doors."""
    graph: GraphConfig
    """The OPs and how they connect."""
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    """OpenTelemetry traces (off unless an OTLP endpoint is set)."""

    @property
    def model_dir(self) -> str | None:
        return self.model.path

    @model_validator(mode="before")
    @classmethod
    def _model_section(cls, raw: Any) -> Any:
        """`model: PATH` -> `model: {path: PATH}`; the older `model_dir: PATH` -> model.path."""
        if not isinstance(raw, dict):
            raise invalid("the configuration must be a mapping")
        model = raw.get("model")
        model = {"path": model} if isinstance(model, str) else ({} if model is None else model)
        model_dir = raw.get("model_dir")
        if model_dir is not None and isinstance(model, dict):
            if model.get("path") is not None:
                raise invalid("names the model a second time; keep model.path alone", "model_dir")
            if isinstance(model_dir, str) and model_dir.strip():
                model = {**model, "path": model_dir}
        return {**raw, "model": model}

    @field_validator("graph", mode="before")
    @classmethod
    def _one_model_for_every_op(cls, graph: Any, info: ValidationInfo) -> Any:
        """The `model` section fills the settings of each OP whose Settings has a model_dir,
        unless the OP sets its own."""
        model = info.data.get("model")
        given = {setting: getattr(model, key) for key, setting in MODEL_KEYS.items()
                 if model is not None and getattr(model, key) is not None}
        if not (given and isinstance(graph, dict) and isinstance(graph.get("ops"), dict)):
            return graph
        graph = copy.deepcopy(graph)
        for op in graph["ops"].values():
            if isinstance(op, dict) and "model_dir" in (takes := _settings_of(op)):
                settings = op.setdefault("settings", {})
                for setting, value in given.items():
                    if setting in takes:  # dtype: only the OPs that compute with a model
                        settings.setdefault(setting, value)
        return graph



def served_graph(config: dict | None = None, *, model_dir: str | None = None, bpe_path: str | None = None,
                 vae_path: str | None = None, clip: str | None = None) -> GraphConfig:
    """The graph `tessera serve` would serve with `config` (None: the shipped DEFAULT_CONFIG),
    its `model` section's files replaced by the given ones: what the offline pipeline runs,
    so the same seeds give the same images.

        pipe = LocalPipeline(served_graph(model_dir="ops/bundled/shapes-dalle"), capacity=64)
    """
    raw = copy.deepcopy(DEFAULT_CONFIG if config is None else config)
    override_model(raw, {"path": model_dir, "bpe_path": bpe_path, "vae": vae_path, "clip": clip})
    return AppConfig.from_dict(raw).graph


def override_model(raw: dict, given: dict[str, Any]) -> None:
    """The configuration mapping `raw`'s `model` section with the given keys (path, bpe_path,
    vae, clip, dtype; None keeps the file's) in place, as `tessera serve --model ...` does: a given
    path replaces the file's model, whichever key (`model`, `model_dir`) named it."""
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return
    section = raw.get("model")
    section = {"path": section} if isinstance(section, str) else dict(section or {})
    if "path" in given:
        raw.pop("model_dir", None)
    elif raw.get("model_dir") is not None:
        section["path"] = raw.pop("model_dir")
    raw["model"] = {**section, **given}


def _settings_of(op: dict) -> set[str]:
    """The names the OP's Settings takes (none when its type or settings are bad: the graph's
    check reports those)."""
    try:
        cls = resolve_op_type("type", op.get("type", ""))
    except ConfigError:
        return set()
    settings = op.get("settings")
    return {f.name for f in fields(cls.Settings)} if settings is None or isinstance(settings, dict) else set()
