"""The Node.js client (clients/node) against a live server: the same seed, the same PNG bytes
as the Python client; a refused request is the server's status and message."""
from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from tessera.clients import TesseraClient
from tests.clients.conftest import NODE_DIR
from tests.clients.recording_server import old_server
from tests.server.rpc.conftest import app_config, serving

PROMPT = "a small red circle in the top left on a blue background"


def _python_pngs(target: str, seed: int) -> list[bytes]:
    with TesseraClient(target, timeout=60) as client:
        return [im.png for im in client.generate(PROMPT, num_images=2, num_candidates=4, seed=seed).images]


async def test_node_client_writes_the_python_clients_bytes_for_a_seed(tiny_model_dir, node, tmp_path):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        target = f"127.0.0.1:{server.port}"
        # The README's example command, with the live server's address.
        proc = await asyncio.to_thread(subprocess.run, [
            node, str(NODE_DIR / "generate.js"), PROMPT, "--num-images", "2", "--candidates", "4", "--seed", "11",
            "--out", str(tmp_path), "--server", target], capture_output=True, text=True, timeout=120)
        expected = await asyncio.to_thread(_python_pngs, target, 11)
    assert proc.returncode == 0, proc.stderr
    written = sorted(tmp_path.glob("*.png"))
    assert [p.name[:8] for p in written] == ["node_00_", "node_01_"]  # best CLIP score first; not the C++ names
    assert [p.read_bytes() for p in written] == expected
    assert all("clip_score=" in line for line in proc.stdout.splitlines()) and len(proc.stdout.splitlines()) == 2


async def test_node_client_reports_the_servers_refusal(tiny_model_dir, node, tmp_path):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        proc = await asyncio.to_thread(subprocess.run, [
            node, str(NODE_DIR / "generate.js"), "a red circle", "--num-images", "3", "--candidates", "2",
            "--out", str(tmp_path), "--server", f"127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "INVALID_ARGUMENT" in proc.stderr and "num_images" in proc.stderr
    assert not list(tmp_path.glob("*.png"))


async def test_node_client_names_the_model_and_lists_a_server_without_list_models(node, tmp_path):
    async with old_server() as (port, recorded):
        target = f"127.0.0.1:{port}"
        proc = await asyncio.to_thread(subprocess.run, [
            node, str(NODE_DIR / "generate.js"), "a red circle", "--model", "mini", "--priority=-2",
            "--out", str(tmp_path), "--server", target], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        # The library: info names its model; listModels meets UNIMPLEMENTED and lists the one model.
        script = ("const { TesseraClient } = require('./tessera'); const c = new TesseraClient(process.argv[1]);"
                  "(async () => { await c.info('mini'); console.log(JSON.stringify(await c.listModels()));"
                  " c.close(); })().catch((e) => { console.error(e.message); process.exit(1); });")
        listed = await asyncio.to_thread(subprocess.run, [node, "-e", script, target], capture_output=True, text=True,
                                         timeout=60, cwd=NODE_DIR)
    assert [(r.model, r.priority) for r in recorded.generate] == [("mini", -2)]
    assert listed.returncode == 0, listed.stderr
    assert [r.model for r in recorded.info] == ["mini", ""]
    assert json.loads(listed.stdout) == [{"name": "", "version": "3", "model_kind": "tessera", "model_name": "old-model",
                                          "state": "serving", "load_ms": 0}]


@pytest.mark.parametrize("flag, says", [(["--priority", "soon"], "--priority needs an integer"),
                                        (["--priority", "-2"], "--priority=-")])  # node's parseArgs: use =
def test_node_client_refuses_a_priority_it_cannot_read_with_usage_not_a_stack(node, tmp_path, flag, says):
    proc = subprocess.run([node, str(NODE_DIR / "generate.js"), "a red circle", *flag, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr and "usage:" in proc.stderr
    assert "node:internal" not in proc.stderr  # a message, not a stack trace
    assert not (tmp_path / "out").exists()
