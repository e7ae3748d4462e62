"""The configurations `tessera bench` compares, and servers it starts for them.

Each configuration derives from the shipped default, so a comparison changes only
what its name says; `generic` is not Tessera's server at all but a generic batching
server running the same OPs (bench/generic.py), started by `GenericServer`.
"""
from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tessera.bench.cpu import processes


def bench_configs(model_dir: str | None = None, device: str | None = None,
                  settings: dict | None = None, sample_settings: dict | None = None,
                  forward_settings: dict | None = None) -> dict[str, dict]:
    """`device` (e.g. cuda:0) places the model OPs (all but tokenize); `settings` go to them too,
    `sample_settings` to the sampler alone and `forward_settings` to the others."""
    from tessera.server.defaults import DEFAULT_CONFIG

    default = copy.deepcopy(DEFAULT_CONFIG)
    default["model_dir"] = model_dir
    for name, op in default["graph"]["ops"].items():
        if name != "tokenize":
            if device:
                op["devices"] = [device]
            extra = {**(settings or {}), **((sample_settings if name == "sample" else forward_settings) or {})}
            if extra:
                op["settings"] = {**op.get("settings", {}), **extra}
    default["graph"]["max_inflight"] = 4096
    for op in default["graph"]["ops"].values():
        op["channel_capacity"] = 4096
    # What shipped before 2026-12-04: one sampler worker, every CPU call taking the
    # device's turn with all its cores. On a GPU the figures were measured in this shape,
    # so there it is also `default`.
    turns = copy.deepcopy(default)
    turns["graph"]["device_turns"] = True
    turns["graph"]["ops"]["sample"]["concurrency"] = 1
    if device and not device.startswith("cpu"):
        default = copy.deepcopy(turns)
    serial = copy.deepcopy(default)
    for op in serial["graph"]["ops"].values():  # one row per call, one worker: no batching anywhere
        op.update(batch_size=1, batch_timeout_ms=0, concurrency=1)
    static = copy.deepcopy(default)
    static["graph"]["ops"]["sample"].setdefault("settings", {})["static_batching"] = True
    static["graph"]["ops"]["sample"]["batch_timeout_ms"] = 5
    # The heavy OPs as Ray actors on a local Ray (started by the server), one CPU each as a
    # Ray Serve replica would ask; everything else as in `turns`.
    on_ray = copy.deepcopy(turns)
    for name in ("sample", "decode"):
        on_ray["graph"]["ops"][name].update(mode="ray", ray_actor_options={"num_cpus": 1})
    # The model OPs each in a child process of their own (taking the node's turn), the
    # front end only serving: compute away from the event loop's GIL, as `generic` does.
    in_processes = copy.deepcopy(turns)
    for name, op in in_processes["graph"]["ops"].items():
        if name != "tokenize":
            op["mode"] = "process"
    # What shipped before `threads: auto`: every call on all of torch's threads, taking turns.
    all_threads = copy.deepcopy(turns)
    for op in all_threads["graph"]["ops"].values():
        op["threads"] = os.cpu_count() or 1
    # Measured and not adopted, so no longer offered here (their figures and the configurations
    # they ran are in docs/performance.md): `shared` (two sampler workers, no device turns),
    # `parallel` (no turns, one thread per OP), `wide` (a 128-row sampler batch) and `replicas`
    # (two single-threaded sampler processes).
    return {"serial": serial, "static": static, "default": default, "turns": turns, "ray": on_ray,
            "all-threads": all_threads, "processes": in_processes}



def stop_server(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM (the server drains and exits), then SIGKILL if it is still running after
    `timeout_s`; returns once it has exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

class ServerProcess:
    """`tessera serve` in a child process on free ports; stopped with SIGTERM.

    Its output goes to a file, not a pipe: once started nobody reads it while the bench
    runs, and a pipe left unread blocks the server when it fills (a local Ray forwards its
    actors' output to the server's). Ready once the file holds the serving line; if the
    server exits first, or prints no such line within `start_timeout_s`, the error says
    how it ended and what it printed last."""

    SERVING = re.compile(r"tessera: serving .*:(\d+); metrics on http://[^:]+:(\d+)/metrics")

    def __init__(self, name: str, config: dict, start_timeout_s: float = 600, log_level: str = "WARNING"):
        # 600 s: a local Ray's start (GCS, raylet, one actor per worker loading the model) on
        # two busy cores has taken minutes; a server that fails exits, and is reported, sooner.
        self.name, self.config, self.start_timeout_s = name, config, start_timeout_s
        self.log_level = log_level  # INFO: the start-up lines (memory, cache) in output()
        self.proc: subprocess.Popen | None = None
        self.port = self.metrics_port = None
        self._path: Path | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        """The server's own process: the bench reads the CPU time of its process tree."""
        return self.proc.pid if self.proc is not None else None

    def environment(self) -> dict[str, str]:
        """The server's environment. With no `graph.ray_address` the server starts a Ray of its
        own, but `ray.init()` joins the cluster named in /tmp/ray/ray_current_cluster when that
        file exists: `ray start`'s, or ray.cluster_utils.Cluster's while a test (test_ray.py)
        runs on the same machine, which kills its nodes and then the cluster. RAY_ADDRESS=local
        makes `ray.init()` start a local Ray whatever that file says."""
        env = dict(os.environ)
        if not (self.config.get("graph") or {}).get("ray_address"):
            env["RAY_ADDRESS"] = "local"
        return env

    def __enter__(self) -> ServerProcess:
        fd, path = tempfile.mkstemp(suffix=".yaml", prefix=f"tessera-{self.name}-")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.config, f)
        self._path = Path(path)
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.server.cli", "serve", "--config", path, "--port", "0",
             "--metrics-port", "0", "--http-port", "-1", "--log-level", self.log_level],
            stdout=self._log, stderr=subprocess.STDOUT, text=True, env=self.environment())
        deadline = time.monotonic() + self.start_timeout_s
        while (match := self.SERVING.search(_read(self._log))) is None:
            if self.proc.poll() is not None:  # exited: its output is all in the file now
                self._fail(f"exited with {_exit_status(self.proc.returncode)} before serving")
            if time.monotonic() > deadline:
                self._fail(f"printed no serving line within {self.start_timeout_s:.0f} s")
            time.sleep(0.1)
        self.port, self.metrics_port = int(match.group(1)), int(match.group(2))
        return self

    def _fail(self, how: str) -> None:
        tail = _tail(_read(self._log)) or "(it printed nothing)"
        self.__exit__()
        raise RuntimeError(f"server {self.name!r} did not start: it {how}; its output ends:\n{tail}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        """What the server has printed so far."""
        return _read(self._log)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop_server(self.proc)
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None


def _read(log) -> str:
    """All of a child's output file so far."""
    log.seek(0)
    return log.read()


def _tail(output: str, limit: int = 2000) -> str:
    """A child's last lines without tracebacks' frames: the errors themselves."""
    lines = [ln for ln in output.splitlines() if ln.strip() and not ln[0].isspace()
             and not ln.startswith("Traceback")]
    return "\n".join(lines)[-limit:]


def _exit_status(code: int) -> str:
    """`2`, or `-9 (SIGKILL)` for a signal."""
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


def running_in_group(pgid: int) -> list[int]:
    """The processes of process group `pgid` that are not zombies (whoever adopted them reaps
    those in its own time, and a container's init may never)."""
    return [pid for pid, fields in processes() if int(fields[2]) == pgid and fields[0] != "Z"]  # pgrp, state


class GenericServer:
    """The generic batching server (bench/generic.py) in a child process on a free loopback
    port, ready once LitServe's /health answers 200 (its inference worker has loaded the
    model); stopped with SIGTERM, and killed with everything it started if it has not
    exited within `stop_timeout_s`. Same `target` and `metrics_url` as ServerProcess: the
    target is the URL the bench's HTTP client posts to, and there are no metrics."""

    def __init__(self, model_dir: str | None = None, device: str | None = None, capacity: int = 64,
                 settings: dict | None = None, max_batch_size: int = 16, batch_timeout_ms: float = 5,
                 start_timeout_s: float = 300, stop_timeout_s: float = 30):
        self.args = ["--capacity", str(capacity), "--max-batch-size", str(max_batch_size),
                     "--batch-timeout-ms", str(batch_timeout_ms), "--device", device or "cpu"]
        if model_dir:
            self.args += ["--model-dir", str(model_dir)]
        for key, value in (settings or {}).items():  # dtype, decode_mode, sample_on, forward_mode
            self.args += [f"--{key.replace('_', '-')}", str(value)]
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.pgid: int | None = None
        self.returncode: int | None = None  # once stopped
        self.metrics_url = None

    @property
    def pid(self) -> int | None:
        """The server's own process: the bench reads the CPU time of its process tree."""
        return self.proc.pid if self.proc is not None else None

    @property
    def target(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"

    def __enter__(self) -> GenericServer:
        for _ in range(3):  # LitServe takes a port, not 0: another process may take ours first
            if self._start():
                return self
        raise RuntimeError(f"generic server: port {self.port} was taken three times running")

    def _start(self) -> bool:
        """True once it is ready; False if its port was taken meanwhile (it has stopped)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe nobody reads while the bench runs
        # Its own session, so that stopping it reaches LitServe's API and inference processes too.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.bench.generic", "--port", str(self.port), *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pgid = self.proc.pid  # its session's (and process group's) id
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self._log_tail()
                self.__exit__()
                if "address already in use" in log.lower():
                    return False
                raise RuntimeError(f"generic server exited with {self.returncode}: {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass  # not listening yet, or 503 while its worker loads the model
            time.sleep(0.2)
        log = self._log_tail()
        self.__exit__()
        raise RuntimeError(f"generic server not ready after {self.start_timeout_s:.0f} s: {log}")

    def _log_tail(self) -> str:
        return _tail(_read(self._log))

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever of its session is left, the leader included if it did not exit in time
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.returncode = self.proc.returncode
        # A killed process lives on until the kernel has torn it down: return once none is
        # left running (they are not our children, so there is nothing to wait on but /proc).
        deadline = time.monotonic() + self.stop_timeout_s
        while running_in_group(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._log.close()
        self.proc = None
