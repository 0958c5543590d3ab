"""API keys: `authorization: Bearer <key>` on every call, jobs private to their key, and the
per-key quota's RetryInfo."""

from __future__ import annotations

import grpc
import pytest

import dakota_client as dc
from conftest import API_KEYS
from dakota_client import Client
from helpers import Server

ALPHA, BETA = API_KEYS


def test_calls_need_a_valid_api_key(auth_server: Server) -> None:
    for key in (None, "not-a-key-of-this-server"):
        with Client(auth_server.url, api_key=key, timeout=10) as client:
            with pytest.raises(dc.Unauthenticated) as refused:
                client.search(["duration risk"])
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(dc.Unauthenticated):
                client.run("Private credit", word_count=300)
            # Health checks stay open for probes.
            assert client.health() == dc.ServingStatus.SERVING


def test_a_job_belongs_to_its_key_and_the_quota_says_when_to_retry(auth_server: Server) -> None:
    with Client(auth_server.url, api_key=f"  {ALPHA}\n", timeout=60) as alpha:
        article = alpha.run("Private credit and liquidity", word_count=300)
        assert alpha.get_article(article.job_id).job_id == article.job_id
        # One job a minute for this key: the next is refused, saying when to try again.
        with pytest.raises(dc.ResourceExhausted) as exhausted:
            alpha.run("Pension risk transfer", word_count=300)
    assert exhausted.value.retry_delay is not None and exhausted.value.retry_delay > 0
    assert "retry after" in str(exhausted.value)

    with Client(auth_server.url, api_key=BETA, timeout=10) as beta:
        with pytest.raises(dc.NotFound):
            beta.get_article(article.job_id)
        with pytest.raises(dc.NotFound):
            beta.cancel(article.job_id)
