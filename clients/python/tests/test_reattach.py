"""A connection cut mid-job: the client re-attaches and hands out every event once, and the
server runs one job."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import dakota_client as dc
from dakota_client import Client
from helpers import CuttingProxy, Server

TOPIC = "Liquidity tiers for pension funds"


def eventually(condition: Callable[[], bool], within: float = 5.0) -> bool:
    """The server counts a call when its stream has ended, a moment after the client saw it."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def whole_log(server: Server, job_id: str) -> list[dc.GenerateEvent]:
    with Client(server.url, timeout=10) as direct:
        return [event.raw for event in direct.watch(job_id)]


def test_a_cut_after_some_events_re_attaches_with_watchjob_and_loses_nothing(server: Server) -> None:
    started = server.counter("dakota_jobs_started_total")
    watches = server.counter("dakota_grpc_requests_total", method="WatchJob", code="OK")
    proxy = CuttingProxy(server.grpc_addr, after_messages=3)
    try:
        with Client(proxy.address, timeout=60) as client:
            stream = client.generate(TOPIC, word_count=600)
            events = list(stream)
    finally:
        proxy.close()

    assert proxy.cut.is_set() and proxy.connections == 2
    assert stream.reattachments == 1
    assert eventually(lambda: server.counter("dakota_grpc_requests_total", method="WatchJob", code="OK") == watches + 1)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[-1].body, dc.Completed)
    assert [e.raw for e in events] == whole_log(server, events[0].job_id)
    assert server.counter("dakota_jobs_started_total") == started + 1


def test_a_cut_before_the_first_event_sends_generate_again_with_the_same_key(server: Server) -> None:
    key = f"pytest-{uuid.uuid4()}"
    started = server.counter("dakota_jobs_started_total")
    proxy = CuttingProxy(server.grpc_addr, after_messages=0)
    try:
        with Client(proxy.address, timeout=60) as client:
            stream = client.generate(TOPIC, word_count=600, idempotency_key=key)
            events = list(stream)
    finally:
        proxy.close()

    assert proxy.cut.is_set() and stream.reattachments == 1
    assert isinstance(events[0].body, dc.JobStarted) and events[0].body.idempotency_key == key
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.raw for e in events] == whole_log(server, events[0].job_id)
    # The job the first request started is the one the retry followed: one job, not two.
    assert server.counter("dakota_jobs_started_total") == started + 1


def test_the_async_client_re_attaches_the_same_way(server: Server) -> None:
    proxy = CuttingProxy(server.grpc_addr, after_messages=5)

    async def scenario() -> tuple[dc.AsyncJobStream, list[dc.Event]]:
        async with dc.AsyncClient(proxy.address, timeout=60) as client:
            stream = client.generate(TOPIC, word_count=600)
            return stream, [event async for event in stream]

    try:
        stream, events = asyncio.run(scenario())
    finally:
        proxy.close()
    assert proxy.cut.is_set() and stream.reattachments == 1
    assert [e.raw for e in events] == whole_log(server, events[0].job_id)
