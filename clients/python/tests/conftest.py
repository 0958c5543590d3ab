"""Servers started once per test session, on free ports: the offline defaults; API keys with a
one-job quota; TLS with a test CA; an LLM nobody listens on (jobs fail UNAVAILABLE)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import Pki, Server, free_port

API_KEYS = ("alpha-key-0123456789", "beta-key-0123456789")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    running = Server("offline")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def auth_server() -> Iterator[Server]:
    # Each key may start one job at once and then one a minute: the second is refused
    # RESOURCE_EXHAUSTED with RetryInfo.
    running = Server("auth", ["--api-keys", ",".join(API_KEYS), "--generate-per-minute", "1", "--generate-burst", "1"])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session")
def tls_server(pki: Pki) -> Iterator[Server]:
    running = Server("tls", ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def llm_down_server() -> Iterator[Server]:
    # The LLM at a loopback port nobody listens on, one attempt per call: the writer cannot
    # write, and the job fails UNAVAILABLE.
    running = Server("llm-down", ["--max-attempts", "1", "--breaker-threshold", "1"],
                     {"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    yield running
    running.stop()
