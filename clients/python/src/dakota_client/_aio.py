"""`AsyncClient`: the asyncio client, on `grpc.aio`. The same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from . import content_pb2 as pb
from ._common import (
    CHANNEL_OPTIONS,
    HEALTH_CHECK,
    CaCert,
    Endpoint,
    Event,
    Follow,
    JobOptions,
    Reattach,
    ServingStatus,
    call_error,
    call_metadata,
    failure,
    generate_request,
    method,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class AsyncClient:
    """A connection to a Dakota server, for asyncio; the arguments are `Client`'s.

        async with AsyncClient("127.0.0.1:50051") as client:
            async for event in client.generate("Private credit"):
                ...
            article = await client.run("Private credit")
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        ca_cert: CaCert | None = None,
        timeout: float | None = None,
    ) -> None:
        self._endpoint = Endpoint.parse(target, ca_cert)
        self._metadata = call_metadata(api_key)
        self._timeout = timeout
        if self._endpoint.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._endpoint.root_certificates)
            self._channel = grpc.aio.secure_channel(self._endpoint.target, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(self._endpoint.target, options=CHANNEL_OPTIONS)
        channel = self._channel
        self._generate: grpc.aio.UnaryStreamMultiCallable[pb.GenerateRequest, pb.GenerateEvent] = (
            channel.unary_stream(method("Generate"), pb.GenerateRequest.SerializeToString, pb.GenerateEvent.FromString)
        )
        self._watch_job: grpc.aio.UnaryStreamMultiCallable[pb.WatchJobRequest, pb.GenerateEvent] = (
            channel.unary_stream(method("WatchJob"), pb.WatchJobRequest.SerializeToString, pb.GenerateEvent.FromString)
        )
        self._get_article: grpc.aio.UnaryUnaryMultiCallable[pb.GetArticleRequest, pb.Article] = channel.unary_unary(
            method("GetArticle"), pb.GetArticleRequest.SerializeToString, pb.Article.FromString
        )
        self._cancel_job: grpc.aio.UnaryUnaryMultiCallable[pb.CancelJobRequest, pb.CancelJobResponse] = (
            channel.unary_unary(method("CancelJob"), pb.CancelJobRequest.SerializeToString, pb.CancelJobResponse.FromString)
        )
        self._search: grpc.aio.UnaryUnaryMultiCallable[pb.SearchKnowledgeBaseRequest, pb.SearchKnowledgeBaseResponse] = (
            channel.unary_unary(
                method("SearchKnowledgeBase"),
                pb.SearchKnowledgeBaseRequest.SerializeToString,
                pb.SearchKnowledgeBaseResponse.FromString,
            )
        )
        self._health: grpc.aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse] = (
            channel.unary_unary(
                HEALTH_CHECK, health_pb2.HealthCheckRequest.SerializeToString, health_pb2.HealthCheckResponse.FromString
            )
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection (cancelling the calls still open on it)."""
        await self._channel.close()

    # -- jobs ------------------------------------------------------------------------------

    def generate(self, topic: str, **options: Unpack[JobOptions]) -> AsyncJobStream:
        """As `Client.generate`: `async for event in client.generate(...)`."""
        request = generate_request(topic, options)
        follow = Follow(self._endpoint.target, request=request, timeout=options.get("timeout", self._timeout))
        return AsyncJobStream(self, follow, Reattach(0.0, generate=request))

    async def run(
        self, topic: str, *, on_event: Callable[[Event], object] | None = None, **options: Unpack[JobOptions]
    ) -> pb.Article:
        """As `Client.run`: the finished article, or the failed job's error."""
        async for event in self.generate(topic, **options):
            if on_event is not None:
                on_event(event)
            if isinstance(event.body, pb.Completed):
                return event.body.article
            if isinstance(event.body, pb.Failed):
                raise failure(event, event.body)
        raise AssertionError("a job stream ends with its final event")  # pragma: no cover

    def watch(self, job_id: str, *, after: int = 0, timeout: float | None = None) -> AsyncJobStream:
        """As `Client.watch`."""
        follow = Follow(self._endpoint.target, job_id=job_id, after_sequence=after, timeout=self._or_default(timeout))
        return AsyncJobStream(self, follow, Reattach(0.0, watch=pb.WatchJobRequest(job_id=job_id, after_sequence=after)))

    async def get_article(self, job_id: str, *, timeout: float | None = None) -> pb.Article:
        """As `Client.get_article`."""
        return await self._unary(self._get_article, pb.GetArticleRequest(job_id=job_id), timeout, job_id)

    async def cancel(self, job_id: str, *, timeout: float | None = None) -> pb.JobState:
        """As `Client.cancel`."""
        response = await self._unary(self._cancel_job, pb.CancelJobRequest(job_id=job_id), timeout, job_id)
        return response.state

    async def search(
        self, queries: str | Iterable[str], *, max_results: int = 5, per_document: int = 1, timeout: float | None = None
    ) -> list[pb.QueryResult]:
        """As `Client.search`."""
        request = pb.SearchKnowledgeBaseRequest(
            queries=[queries] if isinstance(queries, str) else list(queries),
            max_results=max_results,
            max_per_document=per_document,
        )
        return list((await self._unary(self._search, request, timeout)).results)

    async def health(self, service: str = "", *, timeout: float | None = None) -> ServingStatus:
        """As `Client.health`."""
        response = await self._unary(self._health, health_pb2.HealthCheckRequest(service=service), timeout)
        return ServingStatus.of(response.status)

    # -- plumbing --------------------------------------------------------------------------

    def _or_default(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    async def _unary(
        self,
        call: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        job_id: str | None = None,
    ) -> _Response:
        try:
            return await call(request, timeout=self._or_default(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise call_error(error, self._endpoint.target, job_id=job_id) from None

    def _open(self, plan: Reattach, timeout: float | None) -> grpc.aio.UnaryStreamCall[Any, pb.GenerateEvent]:
        if plan.watch is not None:
            return self._watch_job(plan.watch, timeout=timeout, metadata=self._metadata)
        assert plan.generate is not None
        return self._generate(plan.generate, timeout=timeout, metadata=self._metadata)


class AsyncJobStream:
    """As `JobStream`, for `async for`."""

    def __init__(self, client: AsyncClient, follow: Follow, first: Reattach) -> None:
        self._client = client
        self._follow = follow
        self._first: Reattach | None = first
        self._call: grpc.aio.UnaryStreamCall[Any, pb.GenerateEvent] | None = None

    @property
    def job_id(self) -> str | None:
        return self._follow.job_id

    @property
    def last_sequence(self) -> int:
        return self._follow.last_sequence

    @property
    def reattachments(self) -> int:
        return self._follow.reattachments

    def __aiter__(self) -> AsyncJobStream:
        return self

    async def __anext__(self) -> Event:
        while not self._follow.finished:
            if self._call is None:
                assert self._first is not None
                self._call, self._first = self._client._open(self._first, self._follow.remaining()), None
            try:
                raw = await self._call.read()
            except grpc.RpcError as error:
                await self._reattach(error)
                continue
            except asyncio.CancelledError:
                self.close()
                raise
            if raw is grpc.aio.EOF:
                await self._reattach(None)
                continue
            assert isinstance(raw, pb.GenerateEvent)
            event = self._follow.accept(raw)
            if event is not None:
                return event
        raise StopAsyncIteration

    def close(self) -> None:
        """Stops following the job (its RPC is cancelled)."""
        self._follow.finished = True
        if self._call is not None:
            self._call.cancel()

    async def _reattach(self, error: grpc.RpcError | None) -> None:
        plan = self._follow.reattach(error)
        await asyncio.sleep(plan.delay)
        self._call = self._client._open(plan, self._follow.remaining())
