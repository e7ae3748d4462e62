"""`tessera serve` as a user runs it: a subprocess, a config file, SIGTERM."""
from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tessera.clients import TesseraClient
from tessera.server.defaults import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[2]


FREE_PORTS = ("--port", "0", "--http-port", "-1", "--metrics-port", "-1")


def tessera(*args, **kw):
    """`tessera ARGS`; a `serve` that names no port or file of its own gets free ones (tests/ports.py)."""
    if args and args[0] == "serve" and not any(a.startswith(("--port", "--config")) for a in args):
        args = (*args, *FREE_PORTS)
    return subprocess.run([sys.executable, "-m", "tessera.server.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, **kw)


def test_deploy_default_yaml_is_the_shipped_default():
    assert yaml.safe_load((ROOT / "deploy" / "default.yaml").read_text()) == DEFAULT_CONFIG


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["graph"]["ops"]["sample"].update(batch_size=0), "graph.ops.sample.batch_size"),
    (lambda c: c["graph"]["ops"]["decode"].update(inputs=["nope"]), "graph.ops.decode.inputs"),
    (lambda c: c["graph"]["ops"]["tokenize"].update(inputs=["request", "rerank"]), "graph.ops"),
    (lambda c: c["server"].update(port=70000), "server.port"),
    (lambda c: c["graph"]["ops"]["rerank"].update(type="tessera.ops.rerank:Nope"), "graph.ops.rerank.type"),
    # each OP's settings are its own typed dataclass
    (lambda c: c["graph"]["ops"]["sample"].update(settings={"half": True}),  # the setting dtype replaced
     "graph.ops.sample.settings.half: unknown key; expected one of ['decode_buckets', 'decode_mode', 'dtype', 'model', 'sample_on', 'static_batching']"),
    (lambda c: c["graph"]["ops"]["decode"].update(settings={"dtype": "yes"}),
     "graph.ops.decode.settings.dtype: must be one of auto, float32, bfloat16, float16; got 'yes'"),
    # a fan-in OP's inputs by its own names (tests/server/test_config.py has the other cases)
    (lambda c: c["graph"]["ops"]["rerank"].update(inputs={"images": "decode", "text": "clip_text"}),
     "graph.ops.rerank.inputs.text: unknown input; RerankOp takes ['images', 'text_embedding']"),
])
def test_bad_configuration_is_one_line_and_a_nonzero_exit(tmp_path, mutate, key):
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["server"].update(port=0, http_port=-1, metrics_port=-1)
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = tessera("serve", "--config", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in proc.stderr


def test_unreadable_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("graph: [unclosed")
    proc = tessera("serve", "--config", str(path))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_on_port_zero_prints_the_port_and_drains_on_sigterm(tiny_model_dir, tmp_path):
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["model_dir"] = str(tiny_model_dir)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "tessera.server.cli", "serve", "--config", str(path),
                             "--port", "0", "--metrics-port", "0", "--http-port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        with TesseraClient(f"127.0.0.1:{port}", timeout=30) as client:
            assert len(client.generate("a blue square", num_images=2).images) == 2
        web = re.search(r"HTTP and the web page on (http://127\.0\.0\.1:\d+/)", line).group(1)
        request = urllib.request.Request(web + "v1/generate", data=b'{"prompt": "a blue square", "numImages": 2}',
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert len(json.load(reply)["images"]) == 2
        os.kill(proc.pid, signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0
        assert "draining" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def _write(tmp_path, cfg) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.taken_port
def test_a_busy_port_is_one_line_naming_it_and_exit_3(tmp_path):
    import socket
    with socket.socket() as taken:  # a listener without SO_REUSEPORT, as another server would hold it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = tessera("serve", "--port", str(port), "--http-port", "-1", "--metrics-port", "-1")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.taken_port
async def test_a_second_server_on_the_same_port_fails_instead_of_sharing_it(tiny_model_dir):
    from tessera.server.app import PortInUse, TesseraServer
    from tests.server.rpc.conftest import app_config

    first = TesseraServer(app_config(tiny_model_dir, metrics_port=-1, http_port=-1))
    port = await first.start()
    try:
        second = TesseraServer(app_config(tiny_model_dir, port=port, metrics_port=-1, http_port=-1))
        with pytest.raises(PortInUse, match=f":{port}"):
            await second.start()
        await second.stop(0)
    finally:
        await first.stop(0)


@pytest.mark.parametrize("server, env, key", [
    ({"token_env": "TESSERA_EMPTY_TOKEN"}, {"TESSERA_EMPTY_TOKEN": ""}, "server.token_env"),
    ({"token_env": ""}, {}, "server.token_env"),
    ({"token_file": ""}, {}, "server.token_file"),
    ({"auth_exempt_health": "yes"}, {}, "server.auth_exempt_health"),
])
def test_auth_configuration_mistakes_exit_2_naming_the_key(tmp_path, server, env, key):
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["server"].update(server, port=0, metrics_port=-1, http_port=-1)
    proc = tessera("serve", "--config", _write(tmp_path, cfg), env={**os.environ, **env})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in proc.stderr


def test_a_setup_that_fails_while_another_still_computes_exits_1_without_aborting(tmp_path):
    # The start-up fails only once every OP's setup has ended: a setup thread left in torch at
    # the interpreter's exit aborted the process (134, "terminate called without an active
    # exception") instead of the one line and its exit code.
    cfg = {"server": {"port": 0, "metrics_port": -1, "http_port": -1},
           "graph": {"output": "busy", "ops": {
               "failing": {"type": "tests.server.exit_ops:FailingSetupOp", "inputs": ["request"]},
               "busy": {"type": "tests.server.exit_ops:BusySetupOp", "inputs": ["failing"]}}}}
    proc = tessera("serve", "--config", _write(tmp_path, cfg))
    assert proc.returncode == 1, proc.stderr
    assert "this OP never starts" in proc.stderr and "terminate called" not in proc.stderr
