"""The server's configuration: a `server` section, the `model`, and the engine's `graph`.

    config = AppConfig.from_dict(yaml.safe_load(path.read_text()))

Validated once at start-up; every mistake is a ConfigError naming the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from tessera.server.engine import ConfigError, GraphConfig
from tessera.server.engine.config import resolve_op_type

MiB = 1024 * 1024


@dataclass
class Limits:
    max_num_images: int = 16
    max_num_candidates: int = 64
    max_prompt_chars: int = 1000
    max_message_bytes: int = 16 * MiB


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9090        # 0 picks a free port; -1 turns metrics off
    http_port: int = 8080           # HTTP/JSON, SSE and the web page; 0 picks, -1 off
    token_file: str | None = None   # bearer-token auth, off unless one of these is set
    token_env: str | None = None
    auth_exempt_health: bool = True  # health checks need no token (Kubernetes probes send none)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    limits: Limits = field(default_factory=Limits)


# The `model` section's keys -> the model OPs' settings they fill in (ops/shared.py, ModelSettings).
MODEL_KEYS = {"path": "model_dir", "bpe_path": "bpe_path", "vae": "vae_path", "clip": "clip"}


@dataclass
class ModelConfig:
    """Which model to serve (`model:`; `tessera serve --model/--bpe-path/--vae/--clip`)."""
    path: str | None = None      # a Tessera model directory, a DALLE-pytorch .pt, min-dalle's
                                 # directory; None: the bundled shapes model
    bpe_path: str | None = None  # DALLE-pytorch: CLIP's BPE merges (plain or .gz) or a tokenizers JSON
    vae: str | None = None       # DALLE-pytorch: a separately trained DiscreteVAE (train_vae.py's file)
    clip: str | None = None      # ARCH:PATH, a local OpenCLIP checkpoint that reranks

    @classmethod
    def from_raw(cls, raw: Any, model_dir: Any) -> ModelConfig:
        """`model: PATH`, `model: {path: ..., ...}`, or the older top-level `model_dir: PATH`."""
        if raw is None:
            raw = {}
        elif isinstance(raw, str):
            raw = {"path": raw}
        _known("model.", raw, set(MODEL_KEYS))
        if model_dir is not None:
            if raw.get("path") is not None:
                raise ConfigError("model_dir", "names the model a second time; keep model.path alone")
            raw = {**raw, "path": model_dir}
        for key, value in raw.items():
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError("model_dir" if model_dir is not None and key == "path" else f"model.{key}",
                                  f"must be a path, got {value!r}")
        if raw.get("clip") is not None and ":" not in raw["clip"]:
            raise ConfigError("model.clip", f"must be ARCH:PATH (e.g. ViT-B-32:/models/clip.bin), got {raw['clip']!r}")
        return cls(**raw)


@dataclass
class AppConfig:
    server: ServerConfig
    graph: GraphConfig
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def model_dir(self) -> str | None:
        return self.model.path

    @classmethod
    def from_dict(cls, raw: Any) -> AppConfig:
        if not isinstance(raw, dict):
            raise ConfigError("(top level)", "the configuration must be a mapping")
        _known("", raw, {"server", "graph", "model", "model_dir"})
        if "graph" not in raw:
            raise ConfigError("graph", "is required: the OPs and how they connect")
        s = raw.get("server") or {}
        if not isinstance(s, dict):
            raise ConfigError("server", "must be a mapping")
        _known("server.", s, {f.name for f in fields(ServerConfig)})
        limits_raw = s.get("limits") or {}
        _known("server.limits.", limits_raw, {f.name for f in fields(Limits)})
        limits = Limits(**limits_raw)
        for f in fields(Limits):
            _int_range(f"server.limits.{f.name}", getattr(limits, f.name), 1, 2**31 - 1)
        server = ServerConfig(**{**s, "limits": limits})
        _int_range("server.port", server.port, 0, 65535)
        _int_range("server.metrics_port", server.metrics_port, -1, 65535)
        _int_range("server.http_port", server.http_port, -1, 65535)
        for key in ("token_file", "token_env", "tls_cert_file", "tls_key_file"):
            value = getattr(server, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"server.{key}", f"must be a non-empty string (leave it out to turn it off), "
                                                   f"got {value!r}")
        if not isinstance(server.auth_exempt_health, bool):
            raise ConfigError("server.auth_exempt_health", f"must be true or false, got {server.auth_exempt_health!r}")
        if (server.tls_cert_file is None) != (server.tls_key_file is None):
            raise ConfigError("server.tls_cert_file", "TLS needs both tls_cert_file and tls_key_file")
        model = ModelConfig.from_raw(raw.get("model"), raw.get("model_dir"))
        given = {setting: getattr(model, key) for key, setting in MODEL_KEYS.items()
                 if getattr(model, key) is not None}
        graph_raw = copy.deepcopy(raw["graph"])
        if isinstance(graph_raw, dict) and isinstance(graph_raw.get("ops"), dict):
            for op in graph_raw["ops"].values():  # one model for every OP by default
                if isinstance(op, dict) and given and _takes_model_dir(op):
                    settings = op.setdefault("settings", {})
                    for setting, value in given.items():
                        settings.setdefault(setting, value)
        try:
            graph = GraphConfig.from_dict(graph_raw)
        except ConfigError as exc:
            raise ConfigError(f"graph.{exc.key}", str(exc).split(": ", 1)[1]) from None
        return cls(server=server, graph=graph, model=model)


def _takes_model_dir(op: dict) -> bool:
    """Whether the OP's Settings has a model_dir (a bad type is reported by the graph's check)."""
    try:
        cls = resolve_op_type("type", op.get("type", ""))
    except ConfigError:
        return False
    settings = op.get("settings")
    return (settings is None or isinstance(settings, dict)) and any(
        f.name == "model_dir" for f in fields(cls.Settings))


def _known(prefix: str, body: Any, known: set[str]) -> None:
    if not isinstance(body, dict):
        raise ConfigError(prefix.rstrip(".") or "(top level)", "must be a mapping")
    for key in body:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key; expected one of {sorted(known)}")


def _int_range(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, f"must be an integer between {low} and {high}, got {value!r}")
