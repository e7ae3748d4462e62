"""No server a test starts takes a fixed port (tests/ports.py, applied to every test by
tests/conftest.py): here, that the guard refuses one and lets free ones through."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from tessera.server.app import TesseraServer
from tessera.server.config import AppConfig
from tessera.server.defaults import DEFAULT_CONFIG
from tests.ports import FixedPort, serve_ports

SERVE = [sys.executable, "-m", "tessera.server.cli", "serve"]


async def test_a_server_started_in_a_test_on_the_shipped_ports_fails_before_binding():
    server = TesseraServer(AppConfig.from_dict(copy.deepcopy(DEFAULT_CONFIG)))  # 50051, 8080, 9090
    with pytest.raises(FixedPort, match="50051"):
        await server.start()
    assert server.engine is None  # nothing was bound or loaded


@pytest.mark.parametrize("argv", [
    [*SERVE],                                                   # the shipped 50051, 8080, 9090
    [*SERVE, "--port", "0", "--metrics-port", "-1"],             # HTTP left on 8080 (the CI failure)
    [*SERVE, "--port=0", "--http-port=0", "--metrics-port=9100"],
])
def test_a_tessera_serve_subprocess_on_a_fixed_port_is_refused_before_it_starts(argv):
    with pytest.raises(FixedPort):
        subprocess.Popen(argv)


def test_free_ports_on_the_command_line_or_in_the_file_pass(tmp_path):
    config = tmp_path / "free.yaml"
    config.write_text("server: {port: 0, http_port: -1, metrics_port: 0}\n")
    assert serve_ports([*SERVE, "--port", "0", "--http-port", "-1", "--metrics-port", "0"]) == \
        {"port": 0, "http_port": -1, "metrics_port": 0}
    assert serve_ports([*SERVE, "--config", str(config)]) == {"port": 0, "http_port": -1, "metrics_port": 0}
    assert serve_ports([*SERVE, "--config", str(config), "--http-port", "8081"])["http_port"] == 8081
    assert serve_ports([sys.executable, "-c", "print('serve')"]) is None  # not a tessera serve
    proc = subprocess.run([*SERVE, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0  # a command that listens on nothing passes the guard
