"""`tessera generate` and `tessera info` against a real server, when there is none, and the commands' help."""
from __future__ import annotations

import asyncio
import socket
import sys

import pytest
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


async def test_info_prints_what_the_server_serves(tiny_model_dir, capsys):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        code = await asyncio.to_thread(main, ["info", "--server", f"127.0.0.1:{server.port}"])
    out = capsys.readouterr().out
    assert code == 0 and "64 x 64" in out and "max_num_images 16" in out
    assert "red / 红色" in out  # what the model can draw, in both languages
    assert "(tessera)" in out and "rerank     the shapes CLIP" in out and "vocabulary open" not in out


def test_a_token_grpc_cannot_carry_is_refused_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TESSERA_TOKEN", "sécret")
    code = main(["generate", "a red circle", "--server", "127.0.0.1:1", "--token-env", "TESSERA_TOKEN",
                 "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "printable ASCII" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_each_command_has_its_own_help_and_the_client_command_only_the_clients(capsys):
    from tessera.server.cli import main as tessera
    with pytest.raises(SystemExit) as exit_:
        tessera(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert all(f"    {c}" in out for c in ("serve", "generate", "info", "bench", "train", "evaluate"))
    with pytest.raises(SystemExit):
        tessera(["serve", "--help"])
    assert "--metrics-port" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["serve"])  # the client's command knows only generate and info
    assert exit_.value.code == 2 and "invalid choice: 'serve'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "reliability"])
def test_a_bench_command_without_the_bench_installed_says_how_to_install_it(command, monkeypatch, capsys):
    from tessera.server.cli import main as tessera
    monkeypatch.setitem(sys.modules, "tessera.bench", None)  # what an import finds when it is not installed
    assert tessera([command, "--help"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"tessera {command}" in line and "pip install -e ./bench" in line and "Traceback" not in line


async def test_generate_warns_about_words_the_model_does_not_know(tiny_model_dir, tmp_path, capsys):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        code = await asyncio.to_thread(main, [
            "generate", "a red cat", "--seed", "9", "-o", str(tmp_path), "--server", f"127.0.0.1:{server.port}"])
    assert code == 0
    assert "does not know 'cat'" in capsys.readouterr().err


def test_a_wrong_flag_shows_the_commands_own_usage(capsys):
    from tessera.server.cli import main as tessera
    with pytest.raises(SystemExit) as exit_:
        tessera(["serve", "--no-such-flag"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: tessera serve ")
    assert "unrecognized arguments: --no-such-flag" in err and "--metrics-port" in err
    with pytest.raises(SystemExit):
        main(["generate", "a red circle", "--sede", "7"])
    err = capsys.readouterr().err
    assert err.startswith("usage: tessera-client generate ") and "unrecognized arguments: --sede 7" in err


@pytest.mark.parametrize("flag, value", [("--seed", "-5"), ("--seed", str(2**64)), ("-n", "-1"),
                                         ("--top-k", "seven")])
def test_a_number_out_of_range_names_its_flag(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "a red circle", flag, value, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}" in err and value in err
    assert "Value out of range" not in err and not (tmp_path / "out").exists()


def test_generate_help_names_the_default_output_folder(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "tessera-out/" in " ".join(capsys.readouterr().out.split())


async def test_a_call_refused_during_shutdown_says_so_and_nothing_else(tiny_model_dir, tmp_path, capsys):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        server.engine.accepting = False  # draining: reachable, admitting nothing
        try:
            code = await asyncio.to_thread(main, [
                "generate", "a red circle", "-o", str(tmp_path), "--server", f"127.0.0.1:{server.port}"])
        finally:
            server.engine.accepting = True
    err = capsys.readouterr().err
    assert code == 1 and "is shutting down" in err and "cannot reach" not in err


def _with_reader_gone(*args: str) -> tuple[int, str]:
    """Run `tessera ARGS` with its stdout a pipe nobody reads (`tessera info | head -0`)."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "tessera.server.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader left before the first line: every write meets a closed pipe
    err = proc.stderr.read()
    return proc.wait(timeout=60), err


@pytest.mark.parametrize("args", [("config", "--docs"), ("config", "--schema")])
def test_a_closed_pipe_ends_a_command_quietly(args):
    code, err = _with_reader_gone(*args)
    assert (code, err) == (141, "")  # 128 + SIGPIPE, as a shell reports `yes | head`; no traceback


async def test_info_into_a_closed_pipe_ends_quietly(tiny_model_dir):
    async with serving(app_config(tiny_model_dir)) as (server, _):
        code, err = await asyncio.to_thread(_with_reader_gone, "info", "--server", f"127.0.0.1:{server.port}")
    assert (code, err) == (141, "")


async def test_model_and_priority_flags_reach_the_server_and_info_of_a_server_without_names_says_so(tmp_path, capsys):
    from tests.clients.recording_server import old_server
    async with old_server() as (port, recorded):
        target = f"127.0.0.1:{port}"
        code = await asyncio.to_thread(main, ["generate", "a red circle", "--model", "mini", "--priority", "-3",
                                              "-o", str(tmp_path), "--server", target])
        assert code == 0 and [(r.model, r.priority) for r in recorded.generate] == [("mini", -3)]
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["info", "--server", target])
        out, err = capsys.readouterr()
        assert code == 0 and out.startswith("model      old-model (tessera) 3\n") and "models" not in out
        assert not err
        # its words come in the deprecated top-level vocabulary alone, and are still shown
        assert "red / 红色" in out and "circle / 圆形" in out and "vocabulary open" not in out
        code = await asyncio.to_thread(main, ["info", "--model", "mini", "--server", target])
        out, err = capsys.readouterr()
    assert code == 0 and [r.model for r in recorded.info][-2:] == ["", "mini"]  # list_models falls back on GetInfo
    assert "does not name its models" in err and out.startswith("model      old-model")
