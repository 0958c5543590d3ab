"""Jobs end to end against the real server: events, the article, watch, cancel, search, health,
failed jobs, and the asyncio client."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

import dakota_client as dc
from dakota_client import Client
from helpers import Server

TOPIC = "Private credit and liquidity for pension funds"


def test_a_job_streams_typed_events_in_order_and_ends_with_its_article(server: Server) -> None:
    with Client(server.url, timeout=60) as client:
        stream = client.generate(TOPIC, word_count=600, audience="pension trustees")
        events = list(stream)

    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(a.progress <= b.progress for a, b in zip(events, events[1:]))
    assert {e.job_id for e in events} == {stream.job_id}
    assert isinstance(events[0].body, dc.JobStarted) and events[0].kind == "job_started"
    assert [e.final for e in events].count(True) == 1 and isinstance(events[-1].body, dc.Completed)
    plan = [p.phase for p in events[0].body.phases]
    started = [e.body.phase for e in events if isinstance(e.body, dc.PhaseStarted)]
    assert started and all(p in plan for p in started)
    assert any(isinstance(e.body, dc.AgentCompleted) for e in events)
    written = "".join(e.body.text for e in events if isinstance(e.body, dc.ContentDelta))
    assert written.startswith("# ")

    article = events[-1].body.article
    assert article.job_id == stream.job_id and article.topic == TOPIC
    assert article.markdown.startswith("# ") and article.sources
    assert article.metadata.audience == "pension trustees"
    assert article.metadata.target_word_count == 600
    assert stream.reattachments == 0


def test_run_returns_the_article_that_get_article_and_watch_give_back(server: Server) -> None:
    seen: list[dc.Event] = []
    with Client(server.url, timeout=60) as client:
        article = client.run(TOPIC, word_count=400, include_social=False, on_event=seen.append)
        assert client.get_article(article.job_id) == article
        # The last two events again, the final one with the same article.
        replay = list(client.watch(article.job_id, after=len(seen) - 2))
        assert [e.sequence for e in replay] == [len(seen) - 1, len(seen)]
        assert isinstance(replay[-1].body, dc.Completed) and replay[-1].body.article == article
        # A finished job is left as it is.
        assert client.cancel(article.job_id) == dc.content_pb2.JOB_STATE_COMPLETED
    assert isinstance(seen[-1].body, dc.Completed)
    assert not article.HasField("social") and article.HasField("summary")


def test_the_same_idempotency_key_re_attaches_instead_of_starting_a_second_job(server: Server) -> None:
    key = f"pytest-{uuid.uuid4()}"
    started = server.counter("dakota_jobs_started_total")
    with Client(server.url, timeout=60) as client:
        first = client.run(TOPIC, word_count=300, idempotency_key=key)
        again = client.run(TOPIC, word_count=300, idempotency_key=key)
        assert again.job_id == first.job_id
        assert server.counter("dakota_jobs_started_total") == started + 1
        # The same key for another request is refused, naming the field.
        with pytest.raises(dc.InvalidArgument) as refused:
            client.run("Another topic entirely", word_count=300, idempotency_key=key)
    assert [v.field for v in refused.value.field_violations] == ["idempotency_key"]


def test_cancel_stops_a_running_job_and_run_raises_cancelled(server: Server) -> None:
    with Client(server.url, timeout=60) as client:
        stream = client.generate("Infrastructure debt for insurers", word_count=10000)
        first = next(stream)
        assert client.cancel(first.job_id) == dc.content_pb2.JOB_STATE_CANCELLED
        rest = list(stream)
        assert isinstance(rest[-1].body, dc.Failed)
        assert rest[-1].body.code == grpc.StatusCode.CANCELLED.value[0]
        # The failed job's status, from GetArticle, is the same error.
        with pytest.raises(dc.Cancelled) as failed:
            client.get_article(first.job_id)
    assert failed.value.code == grpc.StatusCode.CANCELLED


def test_a_failed_job_raises_its_code_with_the_job_and_phase(llm_down_server: Server) -> None:
    with Client(llm_down_server.url, timeout=60) as client:
        with pytest.raises(dc.Unavailable) as failed:
            client.run(TOPIC, word_count=300)
        error = failed.value
        assert error.job_id and error.phase
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.message and error.message in str(error) and error.job_id in str(error)
        # ContentService reports the LLM's open breaker.
        assert client.health("dakota.content.v1.ContentService") == dc.ServingStatus.NOT_SERVING


def test_search_gives_one_result_per_query_in_order(server: Server) -> None:
    queries = ["duration risk", "hedge fund due diligence"]
    with Client(server.url, timeout=10) as client:
        results = client.search(queries, max_results=3)
        single = client.search("private credit")
    assert [r.query for r in results] == queries
    assert all(1 <= len(r.hits) <= 3 and all(h.title and h.url for h in r.hits) for r in results)
    assert [r.query for r in single] == ["private credit"]


def test_health_of_the_server_and_of_the_content_service(server: Server) -> None:
    with Client(server.url, timeout=10) as client:
        assert client.health() == dc.ServingStatus.SERVING
        assert client.health("dakota.content.v1.ContentService") == dc.ServingStatus.SERVING


def test_the_async_client_runs_jobs_and_raises_the_same_errors(server: Server) -> None:
    async def scenario() -> None:
        async with dc.AsyncClient(server.url, timeout=60) as client:
            events = [event async for event in client.generate(TOPIC, word_count=300)]
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert isinstance(events[-1].body, dc.Completed)
            article = await client.run(TOPIC, word_count=300)
            assert await client.get_article(article.job_id) == article
            assert [r.query for r in await client.search(["duration risk"])] == ["duration risk"]
            assert await client.health() == dc.ServingStatus.SERVING
            with pytest.raises(dc.InvalidArgument) as refused:
                await client.run("ab")
            assert [v.field for v in refused.value.field_violations] == ["topic"]
            with pytest.raises(dc.NotFound):
                await client.get_article(str(uuid.uuid4()))

    asyncio.run(scenario())
