"""The Node.js and C++ clients, ready to run: built by the README's test command, or here
when this checkout has not built them yet (bounded; a missing toolchain fails with the
command that installs it)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
CPP_DIR = ROOT / "clients" / "cpp"
CPP_BUILD = CPP_DIR / "build"
APT = ("apt-get install -y --no-install-recommends cmake g++ pkg-config libgrpc++-dev libprotobuf-dev "
       "protobuf-compiler protobuf-compiler-grpc")


def _need(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is not installed; {how}")
    return path


def _run(cmd: list[str], timeout: float, **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with clients/node's locked dependencies installed."""
    exe = _need("node", "the Node.js client needs Node.js 18+ with npm")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = _need("npm", "the Node.js client needs Node.js 18+ with npm")
        _run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], timeout=300, cwd=NODE_DIR)
    return exe


@pytest.fixture(scope="session")
def cpp_generate() -> Path:
    """clients/cpp's tessera_generate, built against the system's gRPC."""
    cmake = _need("cmake", APT)
    if not (CPP_BUILD / "CMakeCache.txt").exists():
        _need("grpc_cpp_plugin", APT)
        _run([cmake, "-S", str(CPP_DIR), "-B", str(CPP_BUILD)], timeout=120)
    _run([cmake, "--build", str(CPP_BUILD), "-j2"], timeout=600)  # a no-op when it is up to date
    return CPP_BUILD / "tessera_generate"
