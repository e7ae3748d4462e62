"""The rule every test keeps: a server a test starts takes port 0 (or -1, off) for every
listener, never a fixed one that another `tessera serve` on the machine may hold (a CI run
failed on 8080 that way). tests/conftest.py applies `guard` to every test: a TesseraServer
started in the test process, or a `tessera serve` started as a subprocess, that names a
fixed port fails the test before anything binds. A test that hands a server a port it holds
itself, to see the refusal, says so with @pytest.mark.taken_port."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

LISTENERS = {"--port": "port", "--http-port": "http_port", "--metrics-port": "metrics_port"}
# What `tessera serve` listens on when neither the command line nor the file says.
SHIPPED = {"port": 50051, "http_port": 8080, "metrics_port": 9090}
FREE = (0, -1)


def _fixed(port: Any) -> bool:
    """A port another server could hold: 1 to 65535 (anything else is refused as a mistake)."""
    try:
        return 1 <= int(port) <= 65535
    except (TypeError, ValueError):
        return False


class FixedPort(AssertionError):
    """A test's server names a fixed port."""


def check_server_config(server: Any) -> None:
    """The `server` section of an AppConfig a test starts: every listener on 0 or -1."""
    fixed = {key: getattr(server, key) for key in SHIPPED if _fixed(getattr(server, key))}
    if fixed:
        raise FixedPort(f"a test's server listens on fixed ports {fixed}; give every listener 0 (or -1)")


def serve_ports(argv: list[str]) -> dict[str, Any] | None:
    """The ports a `tessera serve` command line listens on (None: it is no serve command)."""
    args = [str(a) for a in argv]
    try:
        start = next(i for i, a in enumerate(args) if a == "serve"
                     and i > 0 and (args[i - 1] == "tessera.server.cli" or Path(args[i - 1]).name == "tessera"))
    except StopIteration:
        return None
    rest = args[start + 1:]
    if "--help" in rest or "-h" in rest:
        return {}
    given: dict[str, str] = {}
    for i, a in enumerate(rest):
        flag, eq, value = a.partition("=")
        if flag in LISTENERS or flag == "--config":
            given[flag] = value if eq else (rest[i + 1] if i + 1 < len(rest) else "")
    ports = dict(SHIPPED)
    if "--config" in given:
        try:
            section = (yaml.safe_load(Path(given["--config"]).read_text()) or {}).get("server") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return {}  # a file the server cannot read: it refuses before any listener
        ports.update({k: section[k] for k in SHIPPED if isinstance(section, dict) and k in section})
    for flag, key in LISTENERS.items():
        if flag in given:
            ports[key] = int(given[flag]) if given[flag].lstrip("-").isdigit() else given[flag]
    return ports


def check_command(argv: Any) -> None:
    if isinstance(argv, (str, bytes)) or not hasattr(argv, "__iter__"):
        return
    ports = serve_ports(list(argv))
    fixed = {k: v for k, v in (ports or {}).items() if _fixed(v)}
    if fixed:
        raise FixedPort(f"a test starts `tessera serve` on fixed ports {fixed}: pass --port 0 "
                        "--http-port -1 --metrics-port -1 (or 0), or set them so in its --config")


def guard(monkeypatch, allow_taken: bool) -> None:
    """Refuse fixed ports for the rest of the test (unless it hands over a port it holds)."""
    if allow_taken:
        return
    import subprocess

    from tessera.server.app import TesseraServer

    popen_init, start = subprocess.Popen.__init__, TesseraServer.start

    def checked_popen(self, args, *rest, **kw):
        check_command(args)
        popen_init(self, args, *rest, **kw)

    async def checked_start(self):
        check_server_config(self.config.server)
        return await start(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked_popen)
    monkeypatch.setattr(TesseraServer, "start", checked_start)
