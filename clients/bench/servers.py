"""The configurations `tessera bench` compares, and servers it starts for them.

Each configuration derives from the shipped default, so a comparison changes only
what its name says.
"""
from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def bench_configs(model_dir: str | None = None, device: str | None = None,
                  settings: dict | None = None, sample_settings: dict | None = None) -> dict[str, dict]:
    """`device` (e.g. cuda:0) places the model OPs (all but tokenize); `settings` go to them too,
    and `sample_settings` to the sampler alone."""
    from tessera.server.defaults import DEFAULT_CONFIG

    default = copy.deepcopy(DEFAULT_CONFIG)
    default["model_dir"] = model_dir
    for name, op in default["graph"]["ops"].items():
        if name != "tokenize":
            if device:
                op["devices"] = [device]
            extra = {**(settings or {}), **((sample_settings or {}) if name == "sample" else {})}
            if extra:
                op["settings"] = {**op.get("settings", {}), **extra}
    default["graph"]["max_inflight"] = 4096
    for op in default["graph"]["ops"].values():
        op["channel_capacity"] = 4096
    serial = copy.deepcopy(default)
    for op in serial["graph"]["ops"].values():  # one row per call, one worker: no batching anywhere
        op.update(batch_size=1, batch_timeout_ms=0, concurrency=1)
    static = copy.deepcopy(default)
    static["graph"]["ops"]["sample"].setdefault("settings", {})["static_batching"] = True
    static["graph"]["ops"]["sample"]["batch_timeout_ms"] = 5
    # The heavy OPs as Ray actors on a local Ray (started by the server), one CPU each as a
    # Ray Serve replica would ask; everything else as in default.
    on_ray = copy.deepcopy(default)
    for name in ("sample", "decode"):
        on_ray["graph"]["ops"][name].update(mode="ray", ray_actor_options={"num_cpus": 1})
    # What shipped before `threads: auto`: every call on all of torch's threads.
    all_threads = copy.deepcopy(default)
    for op in all_threads["graph"]["ops"].values():
        op["threads"] = os.cpu_count() or 1
    return {"serial": serial, "static": static, "default": default, "ray": on_ray, "all-threads": all_threads}


class ServerProcess:
    """`tessera serve` in a child process on free ports; stopped with SIGTERM."""

    def __init__(self, name: str, config: dict):
        self.name, self.config = name, config
        self.proc: subprocess.Popen | None = None
        self.port = self.metrics_port = None

    def __enter__(self) -> ServerProcess:
        fd, path = tempfile.mkstemp(suffix=".yaml", prefix=f"tessera-{self.name}-")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.config, f)
        self._path = Path(path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.server.cli", "serve", "--config", path, "--port", "0",
             "--metrics-port", "0", "--http-port", "-1", "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stdout:  # Ray, when a config uses it, may print lines first
            match = re.search(r":(\d+); metrics on http://[^:]+:(\d+)", line)
            if match or line.startswith("tessera serve:"):
                break
        else:
            line, match = "", None
        if not match:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.__exit__()
            raise RuntimeError(f"server {self.name!r} did not start: {line.strip()} {err.strip()}")
        self.port, self.metrics_port = int(match.group(1)), int(match.group(2))
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._path.unlink(missing_ok=True)
