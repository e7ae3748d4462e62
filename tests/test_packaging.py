"""The install puts everything under one `tessera` namespace, and leaves no folder out."""
from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_python_folder_is_an_installed_package():
    setup = _project()["tool"]["setuptools"]
    listed = set(setup["packages"])
    dirs = setup["package-dir"]
    for pkg, folder in dirs.items():
        for sub in (ROOT / folder).rglob("*.py"):
            rel = sub.parent.relative_to(ROOT / folder)
            if any(part.startswith((".", "_")) or part == "bundled" for part in rel.parts):
                continue
            name = ".".join([pkg, *rel.parts])
            assert name in listed, f"{sub.parent} holds Python but {name} is not in pyproject's packages"
            assert (sub.parent / "__init__.py").exists(), f"{sub.parent} needs an __init__.py to be installed"


def test_no_top_level_server_ops_or_clients_module():
    """Imports go through `tessera.`; a bare `server` or `ops` would clash in site-packages."""
    for name in ("tessera.server.engine", "tessera.ops.sample", "tessera.clients", "tessera.v1.image_generation_pb2"):
        importlib.import_module(name)
    for bare in ("server", "ops", "clients"):
        assert bare not in sys.modules, f"something imported the bare top-level package {bare!r}"
