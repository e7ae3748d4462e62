"""Three distributions under one `tessera` namespace: the server (pyproject.toml), the client
(clients/pyproject.toml) and the benchmark (bench/pyproject.toml), no folder left out, no file
in two, a client that installs and runs without torch, and a bench that depends on both while
neither depends on it. None of them imports the repository's tests."""
from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER, CLIENT, BENCH = ROOT / "pyproject.toml", ROOT / "clients" / "pyproject.toml", ROOT / "bench" / "pyproject.toml"
DISTRIBUTIONS = {"server": SERVER, "client": CLIENT, "bench": BENCH}
# What the client must never pull in: the server side and its libraries.
SERVER_ONLY = ("torch", "numpy", "yaml", "prometheus_client", "matplotlib", "tokenizers", "safetensors",
               "tessera.server", "tessera.ops", "tessera.bench")


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _package_folders(pyproject: Path) -> dict[str, Path]:
    """Each package root a distribution maps, and the folder it installs from."""
    setup = _project(pyproject)["tool"]["setuptools"]
    return {pkg: (pyproject.parent / folder).resolve() for pkg, folder in setup["package-dir"].items()}


def _installed_sources(pyproject: Path):
    """(package name, file) of every Python file the distribution installs."""
    for pkg, folder in _package_folders(pyproject).items():
        for sub in folder.rglob("*.py"):
            rel = sub.parent.relative_to(folder)
            if any(part.startswith((".", "_")) or part in ("bundled", "node_modules", "build") for part in rel.parts):
                continue
            yield ".".join([pkg, *rel.parts]), sub


@pytest.mark.parametrize("pyproject", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS.keys())
def test_every_python_folder_is_an_installed_package(pyproject):
    listed = set(_project(pyproject)["tool"]["setuptools"]["packages"])
    for name, sub in _installed_sources(pyproject):
        assert name in listed, f"{sub.parent} holds Python but {name} is not in {pyproject.name}'s packages"
        assert (sub.parent / "__init__.py").exists(), f"{sub.parent} needs an __init__.py to be installed"


@pytest.mark.parametrize("pyproject", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS.keys())
def test_nothing_installed_imports_the_repositorys_tests(pyproject):
    """An installed package cannot import tests/: it is not installed. What the bench and the
    tests share (the reference projects, their random-weight files) lives in the package."""
    for _, source in _installed_sources(pyproject):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not [n for n in names if n == "tests" or n.startswith("tests.")], \
                f"{source.relative_to(ROOT)}:{node.lineno} imports the repository's tests"


def _pin(pyproject: Path) -> str:
    project = _project(pyproject)["project"]
    return f"{project['name']}=={project['version']}"


def test_the_three_distributions_share_the_namespace_and_no_package():
    server, client, bench = (set(_project(p)["tool"]["setuptools"]["packages"]) for p in (SERVER, CLIENT, BENCH))
    assert not server & client and not server & bench and not client & bench, "a package installed twice"
    assert "tessera" not in server | client | bench and not (ROOT / "protos" / "tessera" / "__init__.py").exists(), \
        "tessera is a namespace package: no distribution may own tessera/__init__.py"
    assert client == {"tessera.clients", "tessera.v1"} and bench == {"tessera.bench"}
    scripts = [_project(p)["project"].get("scripts") for p in (SERVER, CLIENT, BENCH)]
    # The bench's commands are `tessera bench` and `tessera reliability` (tessera.server.cli).
    assert scripts == [{"tessera": "tessera.server.cli:main"}, {"tessera-client": "tessera.clients.cli:main"}, None]


def test_the_bench_depends_on_the_server_and_the_client_and_neither_on_it():
    server, bench = _project(SERVER)["project"], _project(BENCH)["project"]
    assert _pin(CLIENT) in server["dependencies"]
    assert {_pin(SERVER), _pin(CLIENT)} <= set(bench["dependencies"])
    everything_serving_installs = server["dependencies"] + sum(server["optional-dependencies"].values(), [])
    named = {dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in everything_serving_installs}
    assert not named & {bench["name"], "litserve", "matplotlib", "min-dalle"}, "serving installs what only the bench needs"
    assert "bench" not in server["optional-dependencies"]


def test_no_top_level_server_ops_or_clients_module():
    """Imports go through `tessera.`; a bare `server` or `ops` would clash in site-packages."""
    for name in ("tessera.server.engine", "tessera.ops.sample", "tessera.clients", "tessera.bench",
                 "tessera.v1.image_generation_pb2"):
        importlib.import_module(name)
    for bare in ("server", "ops", "clients", "bench"):
        assert bare not in sys.modules, f"something imported the bare top-level package {bare!r}"


def _wheel(tmp_path: Path, project: str, *beside: str) -> tuple[list[str], list[str], zipfile.ZipFile]:
    """The wheel of the distribution in folder `project`, built from a copy of it (and of the
    folders its pyproject reaches into, `beside`), so the build leaves no build/ or egg-info in
    the checkout: its file names, its Requires-Dist lines, and the open wheel."""
    skip = shutil.ignore_patterns("node_modules", "build", "*.egg-info", "__pycache__")
    for folder in (project, *beside):
        shutil.copytree(ROOT / folder, tmp_path / "src" / folder, ignore=skip)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(tmp_path / "src" / project)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("*.whl")
    z = zipfile.ZipFile(wheel)
    names = z.namelist()
    metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    return names, requires, z


def test_client_wheel_needs_no_torch_and_holds_only_the_client(tmp_path):
    names, requires, z = _wheel(tmp_path, "clients", "protos")  # clients/ beside protos/, as its pyproject expects
    with z:
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert sorted(r.split(">")[0].split("=")[0] for r in requires) == ["grpcio", "pillow", "protobuf", "rich"]
    code = [n for n in names if ".dist-info/" not in n]
    assert all(n.startswith(("tessera/clients/", "tessera/v1/")) for n in code), code
    assert "tessera/__init__.py" not in names
    assert {"tessera/v1/image_generation_pb2.py", "tessera/v1/image_generation_pb2_grpc.py",
            "tessera/clients/client.py", "tessera/clients/cli.py"} <= set(names)
    assert "tessera-client = tessera.clients.cli:main" in entry_points


def test_bench_wheel_holds_only_the_bench_and_needs_the_server_and_the_client(tmp_path):
    names, requires, z = _wheel(tmp_path, "bench")  # bench/ alone: it reaches into no other folder
    z.close()
    code = [n for n in names if ".dist-info/" not in n]
    assert code and all(n.startswith("tessera/bench/") and n.endswith(".py") for n in code), code
    assert {"tessera/bench/run.py", "tessera/bench/reliability.py", "tessera/bench/families.py"} <= set(code)
    assert {_pin(SERVER), _pin(CLIENT)} <= set(requires)


BLOCKER = textwrap.dedent('''
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"the client imported {{name}}, which is server-side")
    sys.meta_path.insert(0, Block())
''').format(blocked=SERVER_ONLY)


async def test_client_and_its_command_run_with_torch_and_the_server_side_blocked(tiny_model_dir, tmp_path):
    """What `pip install ./clients` gives, run against a live server in a process where
    importing torch, numpy or any server-side package raises."""
    from tests.server.rpc.conftest import app_config, serving
    program = BLOCKER + textwrap.dedent('''
        import asyncio, sys
        from tessera.clients import AsyncTesseraClient, TesseraClient
        from tessera.clients.cli import main
        target, out = sys.argv[1], sys.argv[2]
        with TesseraClient(target) as client:
            assert len(client.generate("a red circle", num_images=2, seed=5).images) == 2
            assert client.info().image_width == 64
        async def stream():
            async with AsyncTesseraClient(target) as client:
                return [e async for e in client.generate_stream("a blue square", preview_every=8)]
        assert asyncio.run(stream())[-1].images
        assert main(["generate", "蓝色背景上的红色圆形", "-n", "1", "--seed", "3", "-o", out, "--server", target]) == 0
        print("torch" in sys.modules, "numpy" in sys.modules)
    ''')
    async with serving(app_config(tiny_model_dir)) as (server, _):
        proc = await _run_python(program, f"127.0.0.1:{server.port}", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["False", "False"]
    assert len(list(tmp_path.glob("*.png"))) == 2  # the image and its contact sheet


async def _run_python(program: str, *args: str):
    import asyncio
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-c", program, *args], capture_output=True,
                                   text=True, timeout=120, cwd=ROOT / "tests")


def test_the_bench_imports_without_matplotlib_and_its_plot_says_how_to_get_it():
    """matplotlib is the bench distribution's, imported when a plot is drawn: tessera.bench
    (which `tessera bench --help` and `tessera reliability` import) loads where it is missing."""
    assert any(dep.startswith("matplotlib") for dep in _project(BENCH)["project"]["dependencies"])
    program = textwrap.dedent('''
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "matplotlib" or name.startswith("matplotlib."):
                    raise ImportError("matplotlib is not installed")
        sys.meta_path.insert(0, Block())
        import tessera.bench, tessera.bench.report, tessera.bench.run, tessera.bench.reliability
        print("matplotlib" in sys.modules)
        try:
            tessera.bench.report.plot({"default": [(1, [3.5], [400.0])]}, "bench.png")
        except ImportError as exc:
            print(str(exc).split(": ")[-1])
    ''')
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          cwd=ROOT / "tests")
    assert proc.returncode == 0, proc.stderr
    loaded, how = proc.stdout.splitlines()
    assert loaded == "False" and "pip install -e ./bench" in how  # the plot says how to get it


def test_experiments_stay_out_of_the_installed_bench():
    """One-off measurements live beside their figures in docs/performance/experiments/, not in
    tessera.bench: every module of bench/ is the benchmark users run or what it imports."""
    bench = ROOT / "bench"
    assert not {"gpu_check.py", "compile_step.py"} & {p.name for p in bench.glob("*.py")}
    for script in ("gpu_check.py", "compile_step.py"):
        assert (ROOT / "docs" / "performance" / "experiments" / script).exists()
