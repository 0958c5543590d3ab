"""TLS with a test CA made by openssl (as tests/e2e/tls.rs does)."""

from __future__ import annotations

import pytest

import dakota_client as dc
from dakota_client import Client
from helpers import Pki, Server


def test_a_job_over_tls_trusting_the_test_ca(tls_server: Server, pki: Pki) -> None:
    port = tls_server.grpc_addr.rsplit(":", 1)[1]
    for target, ca in ((f"https://127.0.0.1:{port}", str(pki.ca)), (f"localhost:{port}", pki.ca.read_bytes())):
        with Client(target, ca_cert=ca, timeout=60) as client:
            assert client.health() == dc.ServingStatus.SERVING
            article = client.run("Pension risk transfer", word_count=300)
            assert article.markdown.startswith("# ")


def test_without_the_ca_or_without_tls_the_server_is_not_reached(tls_server: Server) -> None:
    port = tls_server.grpc_addr.rsplit(":", 1)[1]
    # gRPC's own roots do not know a test CA.
    with Client(f"https://127.0.0.1:{port}", timeout=10) as client, pytest.raises(dc.Unavailable) as untrusted:
        client.run("Pension risk transfer", word_count=300)
    assert "cannot reach the Dakota server" in str(untrusted.value)
    # Plaintext on a TLS port.
    with Client(f"http://127.0.0.1:{port}", timeout=10) as client, pytest.raises(dc.Unavailable):
        client.health()
