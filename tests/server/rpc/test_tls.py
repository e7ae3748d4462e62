"""Optional TLS: a client that trusts the server's certificate gets images."""
from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest

from tessera.clients import AsyncTesseraClient, TesseraError
from tests.server.rpc.conftest import app_config, serving

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


async def test_tls_round_trip_and_plaintext_is_refused(tiny_model_dir, certificate):
    cert, key = certificate
    config = app_config(tiny_model_dir, tls_cert_file=str(cert), tls_key_file=str(key))
    async with serving(config, root_certificates=str(cert)) as (server, client):
        assert len((await client.generate("a red circle")).images) == 1
        async with AsyncTesseraClient(f"127.0.0.1:{server.port}", retries=0, timeout=3) as plain:
            with pytest.raises(TesseraError) as info:
                await plain.generate("a red circle")
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
