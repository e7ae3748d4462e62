"""`tessera generate` against a real server, and when there is none."""
from __future__ import annotations

import asyncio
import socket

from PIL import Image

from tessera.clients.cli import main
from tests.server.rpc.conftest import app_config, serving


async def test_generate_writes_pngs_and_a_contact_sheet(tiny_model_dir, tmp_path, capsys):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        code = await asyncio.to_thread(main, [
            "generate", "a red circle", "-n", "2", "--candidates", "4", "--seed", "9",
            "-o", str(tmp_path), "--server", f"127.0.0.1:{server.port}"])
    assert code == 0
    pngs = sorted(p for p in tmp_path.glob("*.png") if "contact_sheet" not in p.name)
    assert len(pngs) == 2 and all(Image.open(p).size == (64, 64) for p in pngs)
    sheet = next(tmp_path.glob("*contact_sheet.png"))
    assert Image.open(sheet).width > 128
    out = capsys.readouterr().out
    assert str(sheet) in out and "seed=" in out


def test_unreachable_server_is_a_clear_message(tmp_path, capsys):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["generate", "a red circle", "--server", f"127.0.0.1:{port}", "--timeout", "5",
                 "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach the server" in err and "Traceback" not in err


async def test_refused_request_is_a_clear_message(tiny_model_dir, tmp_path, capsys):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        code = await asyncio.to_thread(main, [
            "generate", "a red circle", "-n", "3", "--candidates", "2", "--server", f"127.0.0.1:{server.port}"])
    err = capsys.readouterr().err
    assert code == 1 and "INVALID_ARGUMENT" in err and "num_images" in err


async def test_generate_warns_about_words_the_model_does_not_know(tiny_model_dir, tmp_path, capsys):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        code = await asyncio.to_thread(main, [
            "generate", "a red cat", "--seed", "9", "-o", str(tmp_path), "--server", f"127.0.0.1:{server.port}"])
    assert code == 0
    assert "does not know 'cat'" in capsys.readouterr().err
