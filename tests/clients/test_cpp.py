"""The C++ client (clients/cpp) against a live server: the same seed, the same PNG bytes as
the Python client; a refused request is the server's status and message."""
from __future__ import annotations

import asyncio
import subprocess

from tests.clients.recording_server import old_server
from tests.clients.test_node import PROMPT, _python_pngs
from tests.server.rpc.conftest import app_config, serving


async def test_cpp_client_writes_the_python_clients_bytes_for_a_seed(tiny_model_dir, cpp_generate, tmp_path):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        target = f"127.0.0.1:{server.port}"
        # The README's example command, with the live server's address.
        proc = await asyncio.to_thread(subprocess.run, [
            str(cpp_generate), PROMPT, "--num-images", "2", "--candidates", "4", "--seed", "11",
            "--out", str(tmp_path), "--server", target], capture_output=True, text=True, timeout=120)
        expected = await asyncio.to_thread(_python_pngs, target, 11)
    assert proc.returncode == 0, proc.stderr
    written = sorted(tmp_path.glob("*.png"))
    assert [p.name[:7] for p in written] == ["cpp_00_", "cpp_01_"]  # best CLIP score first; not Node's names
    assert [p.read_bytes() for p in written] == expected
    assert all("clip_score=" in line for line in proc.stdout.splitlines()) and len(proc.stdout.splitlines()) == 2


async def test_cpp_client_reports_the_servers_refusal(tiny_model_dir, cpp_generate, tmp_path):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        proc = await asyncio.to_thread(subprocess.run, [
            str(cpp_generate), "a red circle", "--num-images", "3", "--candidates", "2",
            "--out", str(tmp_path), "--server", f"127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "INVALID_ARGUMENT" in proc.stderr and "num_images" in proc.stderr
    assert not list(tmp_path.glob("*.png"))


def test_cpp_client_refuses_a_bad_argument(cpp_generate):
    proc = subprocess.run([str(cpp_generate), "a red circle", "--seed", "seven"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "--seed needs a number" in proc.stderr


async def test_cpp_client_sends_the_model_and_priority_it_names(cpp_generate, tmp_path):
    async with old_server() as (port, recorded):
        proc = await asyncio.to_thread(subprocess.run, [
            str(cpp_generate), "a red circle", "--model", "mini", "--priority", "4", "--out", str(tmp_path),
            "--server", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
        await asyncio.to_thread(subprocess.run, [str(cpp_generate), "a red circle", "--out", str(tmp_path),
                                                 "--server", f"127.0.0.1:{port}"], capture_output=True, timeout=120, check=True)
    assert proc.returncode == 0, proc.stderr
    assert [(r.model, r.priority) for r in recorded.generate] == [("mini", 4), ("", 0)]
