"""The README runs as written: its Python snippets and its `tessera generate` and `curl`
commands, against live servers started here with a tiny model on 127.0.0.1, port 0. It stays
a guide (at most 400 lines, two set-up commands), and the links of the README, CONTRIBUTING.md
and docs/ lead somewhere.

What the test changes in a snippet's text, and only this: the README's addresses
`127.0.0.1:50051` (gRPC) and `127.0.0.1:8080` (HTTP) become the live server's; a shell
command's `. .venv/bin/activate && ` is dropped (this interpreter's venv is already first
on PATH) and it runs in a temporary directory with `$TESSERA_SERVER` (the CLI's documented
variable) naming the live server.
Every other block is accounted for below with the reason it does not run here.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.rpc.conftest import app_config, serving

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", README, re.S)]
ADDRESS = "127.0.0.1:50051"
HTTP_ADDRESS = "127.0.0.1:8080"  # the HTTP front door's default, in its curl example
NOT_RUN = {  # the start of a shell block that does not run here, and why
    "python3 -m venv": "the install-and-serve command: serving runs until stopped (tests/server/test_main.py serves)",
    "apt-get update": "the install-and-test command: .ci/run runs it, and it runs this test",
    "tessera bench": "a benchmark: a minute or more of load on the machine (tests/bench/test_bench.py runs its parts)",
}
README_MAX_LINES = 400  # a guide; measurements, operations and contributing live in docs/ and CONTRIBUTING.md
# The Markdown whose relative links and #anchors must resolve.
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "docs" / "performance" / "experiments" / "README.md"]
def _blocks(lang: str, start: str = "") -> list[str]:
    return [code for kind, code in BLOCKS if kind == lang and code.lstrip().startswith(start)]


def test_every_code_block_is_run_here_or_says_why_not():
    for kind, code in BLOCKS:
        if kind in ("", "python"):  # diagrams; Python snippets run below
            continue
        assert kind == "sh", f"a README block in {kind!r}: teach this test to run it"
        first = code.lstrip()
        runs = first.startswith(("curl", ". .venv/bin/activate && tessera generate"))
        assert runs or any(first.startswith(k) for k in NOT_RUN), f"a README shell block nothing runs:\n{code}"
    assert len(_blocks("python")) >= 2 and _blocks("sh", ". .venv/bin/activate && tessera generate")


def test_the_readme_test_command_is_what_ci_runs():
    (command,) = _blocks("sh", "apt-get update")
    assert command.strip() == (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
async def test_python_snippet_runs_as_written(index, tiny_model_dir, tmp_path, monkeypatch):
    code = _blocks("python")[index]
    assert ADDRESS in code
    token = re.search(r'token="([^"]*)"', code)
    server = {}
    if token:  # a snippet that sends a token runs against a server that checks it
        monkeypatch.setenv("TESSERA_README_TOKEN", token.group(1))
        server = {"token_env": "TESSERA_README_TOKEN"}
    async with serving(app_config(tiny_model_dir, **server)) as (live, _):
        text = code.replace(ADDRESS, f"127.0.0.1:{live.port}")
        proc = await asyncio.to_thread(_run, [sys.executable, "-c", text], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the snippet printed nothing"
    if "im.image.save" in code:  # it saves each image as <seed>.png
        seeds = [int(line.split()[1]) for line in proc.stdout.splitlines()[:-1]]
        assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{s}.png" for s in seeds)


async def test_generate_command_runs_as_written(tiny_model_dir, tmp_path):
    (command,) = _blocks("sh", ". .venv/bin/activate && tessera generate")
    command = command.strip().removeprefix(". .venv/bin/activate && ")
    async with serving(app_config(tiny_model_dir)) as (live, _):
        proc = await asyncio.to_thread(_run, ["bash", "-c", command], tmp_path, TESSERA_SERVER=f"127.0.0.1:{live.port}")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / re.search(r"-o (\S+)", command).group(1)
    n = int(re.search(r"-n (\d+)", command).group(1))
    assert len([p for p in out.glob("*.png") if "contact_sheet" not in p.name]) == n
    assert len(list(out.glob("*contact_sheet.png"))) == 1


@pytest.mark.parametrize("index", range(len(_blocks("sh", "curl"))))
async def test_curl_example_runs_as_written(index, tiny_model_dir, tmp_path):
    command = _blocks("sh", "curl")[index].strip()
    assert HTTP_ADDRESS in command
    async with serving(app_config(tiny_model_dir, http_port=0)) as (live, _):
        command = command.replace(HTTP_ADDRESS, f"127.0.0.1:{live.http_port}")
        proc = await asyncio.to_thread(_run, ["bash", "-o", "pipefail", "-c", command], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the example printed nothing"
    for name in re.findall(r"[\w.-]+\.png", proc.stdout):  # a PNG it says it wrote is one
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_is_a_guide_with_exactly_two_setup_commands():
    assert len(README.splitlines()) <= README_MAX_LINES, "move detail into docs/ or CONTRIBUTING.md"
    setup = [code for kind, code in BLOCKS if kind == "sh" and "pip install" in code]
    assert [c.lstrip().split()[0] for c in setup] == ["python3", "apt-get"]  # install-and-serve, install-and-test


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to what is not there: {broken}"
