"""Refused calls: typed errors with the server's google.rpc details, and mistakes caught
before anything is sent."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

import dakota_client as dc
from dakota_client import Client
from helpers import Server, free_port


def test_invalid_arguments_raise_with_one_field_violation_per_bad_field(server: Server) -> None:
    started = server.counter("dakota_jobs_started_total")
    with Client(server.url, timeout=10) as client:
        with pytest.raises(dc.InvalidArgument) as refused:
            list(client.generate("ab", word_count=50, custom_instructions="x" * 1001))
    error = refused.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in error.field_violations} == {"topic", "word_count", "custom_instructions"}
    assert all(v.description for v in error.field_violations)
    # Each violation is in the message a person reads.
    assert all(f"{v.field}: {v.description}" in str(error) for v in error.field_violations)
    assert isinstance(error, dc.DakotaError) and error.retry_delay is None
    assert server.counter("dakota_jobs_started_total") == started


def test_an_unknown_job_is_not_found(server: Server) -> None:
    job_id = str(uuid.uuid4())
    with Client(server.url, timeout=10) as client:
        for call in (client.get_article, client.cancel, lambda j: list(client.watch(j))):
            with pytest.raises(dc.NotFound) as missing:
                call(job_id)
            assert missing.value.job_id == job_id and job_id in str(missing.value)


def test_a_job_id_that_is_not_one_is_an_invalid_argument(server: Server) -> None:
    with Client(server.url, timeout=10) as client, pytest.raises(dc.InvalidArgument) as refused:
        client.get_article("not-a-job-id")
    assert [v.field for v in refused.value.field_violations] == ["job_id"]


def test_an_unreachable_server_fails_at_once_and_says_where(server: Server) -> None:
    target = f"127.0.0.1:{free_port()}"
    with Client(target, timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(dc.Unavailable) as unreachable:
            client.run("Private credit", word_count=300)
        assert time.monotonic() - started < 3, "no re-attach loop when nothing reached a server"
        assert f"cannot reach the Dakota server at {target}" in str(unreachable.value)
        with pytest.raises(dc.Unavailable):
            client.health()


def test_mistakes_in_the_arguments_are_caught_before_connecting(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="API key"):
        Client("127.0.0.1:1", api_key="key\nwith a line break")
    with pytest.raises(ValueError, match="https://"):
        Client("http://127.0.0.1:1", ca_cert=b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError, match="PEM file"):
        Client("https://127.0.0.1:1", ca_cert="/nonexistent/ca.pem")


def test_a_deadline_that_passes_is_deadline_exceeded(server: Server) -> None:
    with Client(server.url) as client, pytest.raises(dc.DeadlineExceeded):
        client.run("Infrastructure debt for insurers", word_count=10000, timeout=0.001)
