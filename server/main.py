"""`tessera serve`: load the configuration, start the server, drain on SIGTERM."""
from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import re
import signal
import sys
from pathlib import Path

import yaml

from tessera.ops.families.base import ModelLoadError
from tessera.server.config import MODEL_NAME, AppConfig, override_model
from tessera.server.defaults import DEFAULT_CONFIG
from tessera.server.engine import ConfigError
from tessera.server.engine import run as run_event_loop
from tessera.server.engine.logs import configure_logging
from tessera.server.engine.platforms import DTYPES

log = logging.getLogger("tessera.server")

# Exit codes: 0 stopped cleanly, 1 could not start (a model that fails to load...),
# 2 a configuration mistake (the line names the key), 3 a port in use (the line names it).
EXIT_CONFIG = 2
EXIT_PORT_IN_USE = 3


def load_config(path: str | None, host: str | None, port: int | None, metrics_port: int | None,
                ray_address: str | None = None, http_port: int | None = None,
                model: dict[str, str | None] | None = None, device: str | None = None,
                models: list[str] | None = None, admin: bool = False,
                otlp_traces_endpoint: str | None = None) -> AppConfig:
    """The configuration file (or the shipped one) with the command line's overrides; `model`
    holds --bpe-path/--vae/--clip/--dtype (and a path) by the `model` section's keys; `models`
    the --model values (PATH once, or NAME=PATH each time: several models); `device` (--device)
    becomes the `devices` of every OP that computes on a device (not the tokenizer)."""
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(path, f"cannot read the configuration: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(path, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        raw = copy.deepcopy(DEFAULT_CONFIG)
    if isinstance(raw, dict):
        server = raw.setdefault("server", {}) or {}
        raw["server"] = server
        for key, value in (("host", host), ("port", port), ("metrics_port", metrics_port),
                           ("http_port", http_port)):
            if value is not None:
                server[key] = value
        if admin:
            server["admin"] = True
        if ray_address is not None and isinstance(raw.get("graph"), dict):
            raw["graph"]["ray_address"] = ray_address
        if otlp_traces_endpoint is not None:
            tracing = raw.get("tracing")
            raw["tracing"] = {**(tracing if isinstance(tracing, dict) else {}),
                              "otlp_traces_endpoint": otlp_traces_endpoint}
        model = dict(model or {})
        named = named_models(models or [])
        if named is None:  # one plain --model PATH (or none): today's model section
            if models:
                model["path"] = models[0]
                raw.pop("models", None)
            if raw.get("models") and any(v is not None for v in model.values()):
                _override_entries(raw["models"], model)
            else:
                override_model(raw, model)
        else:
            raw.pop("model", None)
            raw.pop("model_dir", None)
            raw["models"] = [{"name": name, "path": file or None} for name, file in named]
            _override_entries(raw["models"], model)
        if (model or {}).get("dtype") is not None:
            _drop_op_dtypes(raw.get("graph"))
        if device is not None:
            _set_device(raw.get("graph"), device)
    return AppConfig.from_dict(raw)


def named_models(values: list[str]) -> list[tuple[str, str]] | None:
    """--model's values: None for one plain PATH (or none); else each NAME=PATH as (name, path),
    ConfigError for a plain PATH given twice or beside named ones (which would win is a guess)."""
    named = [v.partition("=")[::2] for v in values if _is_named(v)]
    plain = [v for v in values if not _is_named(v)]
    if not named:
        if len(plain) > 1:
            raise ConfigError("--model", f"is given {len(plain)} times as a plain PATH; to serve several models "
                                         "name each one: --model NAME=PATH (e.g. --model mini=/models/mini)")
        return None
    if plain:
        raise ConfigError("--model", f"{plain[0]!r} has no name beside named models; give it one: --model NAME=PATH")
    return named


def _is_named(value: str) -> bool:
    """NAME=PATH: a model name before the first `=` (a path may hold `=` after a `/`)."""
    name, eq, _ = value.partition("=")
    return bool(eq) and re.fullmatch(MODEL_NAME, name) is not None


def _override_entries(entries: list, given: dict[str, str | None]) -> None:
    """--dtype for every model; --bpe-path, --vae and --clip for the one model they can belong to."""
    given = {k: v for k, v in given.items() if v is not None}
    files = sorted(k for k in given if k != "dtype")
    if files and len(entries) > 1:
        raise ConfigError(f"--{files[0].replace('_', '-')}", "belongs to one model and several are served; "
                                                             "give each model its files under `models:` in a configuration")
    for entry in entries:
        if isinstance(entry, dict):
            entry.update(given)


def _drop_op_dtypes(graph: object) -> None:
    """--dtype forces one precision on every OP: the OPs' own `dtype` settings give way to it."""
    ops = graph.get("ops") if isinstance(graph, dict) else None
    for op in (ops or {}).values() if isinstance(ops, dict) else ():
        if isinstance(op, dict) and isinstance(op.get("settings"), dict):
            op["settings"].pop("dtype", None)


def _set_device(graph: object, device: str) -> None:
    """Put every model OP (one whose class computes on a device) on `device`, before the
    configuration is checked; an OP whose type does not resolve is left for that check."""
    from tessera.server.engine.config import resolve_op_type

    ops = graph.get("ops") if isinstance(graph, dict) else None
    for name, op in (ops or {}).items() if isinstance(ops, dict) else ():
        if not isinstance(op, dict) or not isinstance(op.get("type"), str):
            continue
        try:
            op_class = resolve_op_type(f"ops.{name}.type", op["type"])
        except ConfigError:
            continue
        if op_class.uses_device:
            op["devices"] = [device]


def device_name(value: str) -> str:
    """--device's value: cpu, cuda or cuda:N, as an OP's `devices` take them."""
    from tessera.server.engine.config import is_device_name
    if is_device_name(value):
        return value
    raise argparse.ArgumentTypeError(f"unknown device {value!r}; use cpu, cuda or cuda:N")


async def _serve(config: AppConfig) -> int:
    from tessera.server.app import PortInUse, TesseraServer, precision_text

    server = TesseraServer(config)
    try:
        port = await server.start()
    except ConfigError as exc:  # e.g. token_env names an empty variable: found only now
        print(f"tessera serve: configuration error: {exc}", file=sys.stderr)
        await server.stop(0)
        return EXIT_CONFIG
    except PortInUse as exc:
        print(f"tessera serve: {exc}", file=sys.stderr)
        await server.stop(0)
        return EXIT_PORT_IN_USE
    except ModelLoadError as exc:  # the model's files: the user's input, like the configuration
        print(f"tessera serve: cannot load the model: {exc}", file=sys.stderr)
        await server.stop(0)
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - a start-up failure is one clear line, not a traceback
        print(f"tessera serve: could not start: {exc}", file=sys.stderr)
        await server.stop(0)
        return 1
    metrics = f"; metrics on http://{config.server.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    scheme = "https" if config.server.tls_cert_file else "http"
    web = f"; HTTP and the web page on {scheme}://{config.server.host}:{server.http_port}/" if server.http_port is not None else ""
    served = list(server.models)  # what start() described, not described again
    names = ", ".join(f"'{m.name}'" if m.name == m.info["name"] else f"{m.name} ('{m.info['name']}')" for m in served)
    precision = precision_text(served[0].info["precision"]) if len(served) == 1 else ""
    print(f"tessera: serving {names} on {config.server.host}:{port}{metrics}{web}"
          + (f"; precision: {precision}" if precision else "")
          + ("; admin API on" if config.server.admin else ""), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("tessera: draining in-flight requests...", flush=True)
    await server.stop()
    print("tessera: stopped", flush=True)
    return 0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`tessera serve`'s arguments (the command line is tessera.server.cli)."""
    ap.add_argument("--config", help="YAML configuration (default: the bundled model on the CPU)")
    ap.add_argument("--model", metavar="[NAME=]PATH", action="append",
                    help="the model to serve (model.path): a Tessera model directory, a DALLE-pytorch "
                         "checkpoint (.pt, as train_dalle.py writes it), or the directory holding "
                         "min-dalle's dalle_bart_mega/ or dalle_bart_mini/ and vqgan/ (default: the bundled "
                         "model). NAME=PATH, repeated, serves several models in one server (requests name "
                         "one; `NAME=` alone is the bundled model); a plain PATH is given once")
    ap.add_argument("--admin", action="store_true",
                    help="turn on the admin API (server.admin): load, replace and unload models while serving; "
                         "needs a bearer token (server.token_file or server.token_env)")
    ap.add_argument("--bpe-path", metavar="FILE",
                    help="DALLE-pytorch: the tokenizer the checkpoint was trained with: CLIP's BPE merges "
                         "(bpe_simple_vocab_16e6.txt, plain or .gz) or a tokenizers JSON (model.bpe_path)")
    ap.add_argument("--vae", metavar="FILE",
                    help="DALLE-pytorch: a DiscreteVAE trained apart (train_vae.py's vae.pt) (model.vae)")
    ap.add_argument("--clip", metavar="ARCH:PATH",
                    help="rerank with a local OpenCLIP checkpoint, e.g. ViT-B-32:/models/clip.bin "
                         "(model.clip; without one, images come back in sampling order)")
    ap.add_argument("--device", type=device_name, metavar="DEVICE",
                    help="where the model OPs compute: cpu or cuda:N (sets their devices; default: "
                         "the configuration's). The platform picks the device's shape: on a GPU one "
                         "sampler worker per GPU, on a CPU thread counts and turns")
    ap.add_argument("--dtype", choices=DTYPES,
                    help="the precision of every model OP (model.dtype, over the OPs' own): auto is the "
                         "device's choice (bfloat16 on a CPU with bf16 matmuls for DALLE-pytorch and "
                         "min-dalle, float16 on a GPU, else float32); float32 reproduces the families' "
                         "own projects exactly")
    ap.add_argument("--host", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, help="gRPC port; 0 picks a free one (default 50051)")
    ap.add_argument("--metrics-port", type=int, help="Prometheus port; 0 picks, -1 off (default 9090)")
    ap.add_argument("--http-port", type=int,
                    help="HTTP/JSON, SSE and the web page; 0 picks, -1 off (default 8080)")
    ap.add_argument("--ray-address", help="join this Ray cluster for mode: ray OPs (graph.ray_address; "
                                           "default: start a local Ray when an OP needs one)")
    ap.add_argument("--otlp-traces-endpoint", metavar="URL",
                    help="export OpenTelemetry traces over OTLP to URL, e.g. http://localhost:4317 "
                         "(tracing.otlp_traces_endpoint; default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
                         "else off; needs pip install 'tessera[otel]')")
    ap.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    configure_logging(getattr(logging, args.log_level.upper(), logging.INFO))
    try:
        config = load_config(args.config, args.host, args.port, args.metrics_port,
                             ray_address=args.ray_address, http_port=args.http_port,
                             model={"bpe_path": args.bpe_path, "vae": args.vae, "clip": args.clip,
                                    "dtype": args.dtype},
                             device=args.device, models=args.model, admin=args.admin,
                             otlp_traces_endpoint=args.otlp_traces_endpoint)
    except ConfigError as exc:
        print(f"tessera serve: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:  # before any port is bound: a path that names no model is one line and exit 2
        from tessera.ops.families import family_of
        for entry in config.served:
            family_of(entry.path)
    except ModelLoadError as exc:
        print(f"tessera serve: cannot load the model: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run_event_loop(_serve(config))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tessera serve", description="Serve text-to-image over gRPC.")
    add_arguments(ap)
    return run(ap.parse_args(argv))
