"""The server's configuration: a `server` section, the `model` (or several `models`), the engine's
`graph`, and `tracing`.

    config = AppConfig.from_dict(yaml.safe_load(path.read_text()))

Typed pydantic models, validated once at start-up; every mistake is a ConfigError naming
the key. docs/configuration.md is generated from these models (`tessera config --docs`) and
`tessera config --schema` prints the JSON Schema an editor checks a YAML file against.
"""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, fields
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from tessera.ops.families.base import ModelSpec
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
    admin: bool = False
    """The admin API (gRPC tessera.v1.ModelControl, HTTP POST /v1/models/NAME:load and :unload):
    load, replace and unload models while serving. Needs token_file or token_env: every admin
    call carries the bearer token."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise invalid("TLS needs both tls_cert_file and tls_key_file", "tls_cert_file")
        if self.admin and self.token_file is None and self.token_env is None:
            raise invalid("the admin API loads and unloads models: it needs a bearer token "
                          "(server.token_file or server.token_env)", "admin")
        return self


def _arch_path(value: str | None) -> str | None:
    if value is not None and ":" not in value:
        raise invalid(f"must be ARCH:PATH (e.g. ViT-B-32:/models/clip.bin), got {value!r}")
    return value


class ModelConfig(Section):
    """Which model to serve (`model:`, or `model: PATH`; on the command line `tessera serve
    --model`, `--bpe-path`, `--vae`, `--clip`): its files are a ModelSpec's keys
    (ops/families/base.py), which every model OP's `model` setting takes as they are, unless
    it sets its own; `dtype` fills every model OP's `dtype`."""
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

    @property
    def spec(self) -> ModelSpec:
        """The section's files as the one description the OPs and the families take."""
        return ModelSpec(**{f.name: getattr(self, f.name) for f in fields(ModelSpec)})


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


# What a served model is called: what requests, metrics and the admin API name it by.
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ServedModelConfig(ModelConfig):
    """One entry of `models:`: a model section with the name requests give (`model` in
    GenerateRequest), an optional version, and the OP settings this model needs beside the
    graph's (`ops: {sample: {batch_size: 16}}`; `settings` merge key by key)."""
    name: str = Field(pattern=MODEL_NAME)
    """What requests name the model by (letters, digits, `.`, `_`, `-`; at most 64)."""
    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """Its version, as ListModels reports it; none: 1, and a replacement counts up from the
    version it replaces."""
    ops: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-OP overrides of the graph for this model: `{sample: {batch_size: 16, settings: {...}}}`."""


class AppConfig(Section):
    """The whole configuration file: `model` (or `models`), `server` and `graph`; every section
    may be left out, taking the shipped defaults. (`model: PATH` is short for
    `model: {path: PATH}`.)"""
    legacy_model_dir: Path | None = Field(None, alias="model_dir")
    """The older spelling of `model.path` (keep one of the two)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Which model to serve (one; for several, `models`)."""
    models: list[ServedModelConfig] = Field(default_factory=list)
    """Several models in one server, each a model section with a `name` (requests name it; an
    empty name asks for the first). Without it, `model` is the one model, named after its files."""
    server: ServerConfig = Field(default_factory=ServerConfig)
    """The front doors."""
    graph: GraphConfig = Field(default_factory=lambda: copy.deepcopy(DEFAULT_CONFIG["graph"]), validate_default=True)
    """The OPs and how they connect (the first model's; every model serves the same graph, with
    its own files and `ops` overrides)."""
    _graphs: list[GraphConfig] = PrivateAttr(default_factory=list)
    _raw_graph: dict | None = PrivateAttr(None)  # the graph as written, for models loaded later
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    """OpenTelemetry traces (off unless an OTLP endpoint is set)."""

    @property
    def model_dir(self) -> str | None:
        return self.served[0].path

    @property
    def served(self) -> list[ServedModelConfig]:
        """The models to serve, the first first: `models`, or `model` named after its files."""
        if self.models:
            return list(self.models)
        files = any("model" in {f.name for f in fields(op.op_class.Settings)} for op in self.graph.ops.values())
        name = model_name_of(self.model.path) if files else "default"  # a graph that loads no model files
        return [ServedModelConfig(name=name, **self.model.model_dump())]

    @property
    def graphs(self) -> list[GraphConfig]:
        """Each served model's graph, in `served`'s order (the first is `graph`)."""
        return [self.graph, *self._graphs]

    @classmethod
    def from_dict(cls, raw: Any) -> AppConfig:
        """The whole file -> the configuration, every model's graph checked: a mistake in the
        second model's files or overrides names `models.1....`."""
        config = super().from_dict(raw)
        config._raw_graph = copy.deepcopy(raw.get("graph") or DEFAULT_CONFIG["graph"])
        for i, entry in enumerate(config.served):
            try:
                if i:
                    config._graphs.append(config.graph_of(entry))
                else:  # its graph is `graph`, checked already: only its overrides' names are left
                    _check_overrides(config._raw_graph, entry)
            except ConfigError as exc:
                raise ConfigError(f"models.{i}.{exc.key}", exc.message) from None
        return config

    def graph_of(self, entry: ServedModelConfig) -> GraphConfig:
        """The graph `entry` serves (a model loaded at run time, through the admin API), checked:
        ConfigError names the key in the model section."""
        template = self._raw_graph or DEFAULT_CONFIG["graph"]
        try:
            _check_overrides(template, entry)
            return GraphConfig.from_dict(model_graph(template, entry))
        except ConfigError as exc:
            raise ConfigError(_graph_key(exc.key), exc.message) from None

    @model_validator(mode="before")
    @classmethod
    def _model_section(cls, raw: Any) -> Any:
        """`model: PATH` -> `model: {path: PATH}`; the older `model_dir: PATH` -> model.path;
        `models` alone, or `model` alone."""
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
        models = raw.get("models")
        if models is not None and (model_dir is not None or (isinstance(model, dict) and any(
                v is not None for v in model.values()))):
            raise invalid("names a model beside `models`; list every model under `models`", "model")
        if isinstance(models, list):
            names = [m.get("name") for m in models if isinstance(m, dict)]
            for i, name in enumerate(names):
                if name is not None and names.index(name) != i:
                    raise invalid(f"the name {name!r} is given to two models; each needs its own",
                                  f"models.{i}.name")
        return {**raw, "model": model}

    @field_validator("graph", mode="before")
    @classmethod
    def _one_model_for_every_op(cls, graph: Any, info: ValidationInfo) -> Any:
        """The first model's section fills the `model` (and `dtype`) setting of each OP whose
        Settings takes one, unless the OP (or the model's `ops`) sets its own."""
        models = info.data.get("models") or []
        entry = models[0] if models else info.data.get("model")
        if entry is None or not isinstance(graph, dict):
            return graph
        return model_graph(graph, entry)


def model_name_of(path: str | None) -> str:
    """The name a model given by its files alone serves under: its file's or folder's name
    (`dalle.pt` -> `dalle`, `/models/mini` -> `mini`), `shapes-dalle` for the bundled one."""
    if path is None:
        return "shapes-dalle"
    name = PurePath(path.rstrip("/\\")).name
    name = name.removesuffix(".pt") if name.endswith(".pt") and len(name) > 3 else name
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:64]
    return name or "model"


def model_graph(graph: dict, entry: ModelConfig) -> dict:
    """The raw graph `entry` serves: its `ops` overrides merged in (settings key by key), then
    its spec in every OP whose Settings takes a `model` (the OP's own keys win) and its dtype
    in every one that takes a `dtype`, unless that OP sets its own."""
    if not isinstance(graph.get("ops"), dict):
        return graph
    graph = copy.deepcopy(graph)
    for name, override in getattr(entry, "ops", {}).items():
        op = graph["ops"].get(name)
        if not isinstance(op, dict):
            continue  # _check_overrides names it
        settings = {**(op.get("settings") or {}), **(override.get("settings") or {})}
        op.update({**override, **({"settings": settings} if settings else {})})
    spec = {k: v for k, v in asdict(entry.spec).items() if v is not None}
    for op in graph["ops"].values():
        if not (isinstance(op, dict) and "model" in (takes := _settings_of(op))):
            continue
        settings = op.setdefault("settings", {})
        own = settings.get("model")
        if spec and (own is None or isinstance(own, dict)):
            settings["model"] = {**spec, **(own or {})}
        if entry.dtype is not None and "dtype" in takes:  # only the OPs that compute with a model
            settings.setdefault("dtype", entry.dtype)
    return graph


def _check_overrides(graph: dict, entry: ServedModelConfig) -> None:
    """ConfigError for an `ops` override naming an OP the graph does not have."""
    ops = graph.get("ops") if isinstance(graph.get("ops"), dict) else {}
    for name in entry.ops:
        if name not in ops:
            raise ConfigError(f"ops.{name}", f"the graph has no OP {name!r}; it has {', '.join(ops)}")


def _graph_key(key: str) -> str:
    """A graph's ConfigError key as the model section says it: `ops.sample...` (from the
    model's `ops` overrides, or the graph's own), the graph's keys under `graph.`."""
    return key if key.startswith("ops.") else f"graph.{key}"



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
