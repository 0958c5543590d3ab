"""`Client`: the blocking client, on a `grpc.Channel`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc
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
from .errors import DakotaError

if TYPE_CHECKING:
    from typing_extensions import Unpack

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class Client:
    """A connection to a Dakota server.

        with Client("127.0.0.1:50051") as client:
            article = client.run("Private credit and liquidity", word_count=800)

    Args:
        target: `host:port`, or `http://host:port` / `https://host:port` as the CLI's
            `--server` (https is TLS).
        api_key: sent as `authorization: Bearer <key>` with every call.
        ca_cert: a CA (PEM file path, or its bytes) to trust for TLS instead of gRPC's roots;
            given with a plain `host:port` target, it turns TLS on.
        timeout: default seconds each call may take; for `generate`, `run` and `watch` the
            whole job, re-attaches included. None: no limit.
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
            self._channel = grpc.secure_channel(self._endpoint.target, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(self._endpoint.target, options=CHANNEL_OPTIONS)
        channel = self._channel
        self._generate: grpc.UnaryStreamMultiCallable[pb.GenerateRequest, pb.GenerateEvent] = channel.unary_stream(
            method("Generate"), pb.GenerateRequest.SerializeToString, pb.GenerateEvent.FromString
        )
        self._watch_job: grpc.UnaryStreamMultiCallable[pb.WatchJobRequest, pb.GenerateEvent] = channel.unary_stream(
            method("WatchJob"), pb.WatchJobRequest.SerializeToString, pb.GenerateEvent.FromString
        )
        self._get_article: grpc.UnaryUnaryMultiCallable[pb.GetArticleRequest, pb.Article] = channel.unary_unary(
            method("GetArticle"), pb.GetArticleRequest.SerializeToString, pb.Article.FromString
        )
        self._cancel_job: grpc.UnaryUnaryMultiCallable[pb.CancelJobRequest, pb.CancelJobResponse] = (
            channel.unary_unary(method("CancelJob"), pb.CancelJobRequest.SerializeToString, pb.CancelJobResponse.FromString)
        )
        self._search: grpc.UnaryUnaryMultiCallable[pb.SearchKnowledgeBaseRequest, pb.SearchKnowledgeBaseResponse] = (
            channel.unary_unary(
                method("SearchKnowledgeBase"),
                pb.SearchKnowledgeBaseRequest.SerializeToString,
                pb.SearchKnowledgeBaseResponse.FromString,
            )
        )
        self._health: grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse] = (
            channel.unary_unary(
                HEALTH_CHECK, health_pb2.HealthCheckRequest.SerializeToString, health_pb2.HealthCheckResponse.FromString
            )
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (cancelling the calls still open on it)."""
        self._channel.close()

    # -- jobs ------------------------------------------------------------------------------

    def generate(self, topic: str, **options: Unpack[JobOptions]) -> JobStream:
        """Starts a job and follows it: iterate for its events, the last one `Completed` or
        `Failed`. A dropped connection is resumed (`WatchJob` after the last sequence, or the
        same request again while the job id is not known yet: its idempotency key makes the
        server re-attach rather than start a second job). Refusals raise `DakotaError`s.
        Ctrl-C while iterating cancels the job, as in the CLI."""
        request = generate_request(topic, options)
        timeout = options.get("timeout", self._timeout)
        follow = Follow(self._endpoint.target, request=request, timeout=timeout)
        return JobStream(self, follow, Reattach(0.0, generate=request))

    def run(
        self, topic: str, *, on_event: Callable[[Event], object] | None = None, **options: Unpack[JobOptions]
    ) -> pb.Article:
        """Runs a job to its end and returns its article; a failed job raises the error of
        its code (`Cancelled`, `Unavailable`, ...) with `job_id` and `phase` set. `on_event`
        sees every event first (e.g. a `dakota_client.progress.Progress`)."""
        for event in self.generate(topic, **options):
            if on_event is not None:
                on_event(event)
            if isinstance(event.body, pb.Completed):
                return event.body.article
            if isinstance(event.body, pb.Failed):
                raise failure(event, event.body)
        raise AssertionError("a job stream ends with its final event")  # pragma: no cover

    def watch(self, job_id: str, *, after: int = 0, timeout: float | None = None) -> JobStream:
        """Follows a running or finished job, from the events after sequence `after`."""
        follow = Follow(self._endpoint.target, job_id=job_id, after_sequence=after, timeout=self._or_default(timeout))
        return JobStream(self, follow, Reattach(0.0, watch=pb.WatchJobRequest(job_id=job_id, after_sequence=after)))

    def get_article(self, job_id: str, *, timeout: float | None = None) -> pb.Article:
        """The finished article of a job (`FailedPrecondition` while it runs; the job's own
        error if it failed; `NotFound` for an unknown one)."""
        return self._unary(self._get_article, pb.GetArticleRequest(job_id=job_id), timeout, job_id)

    def cancel(self, job_id: str, *, timeout: float | None = None) -> pb.JobState:
        """Stops a running job; the state after the call (`JOB_STATE_CANCELLED`, or the
        state a finished job already had)."""
        return self._unary(self._cancel_job, pb.CancelJobRequest(job_id=job_id), timeout, job_id).state

    def search(
        self, queries: str | Iterable[str], *, max_results: int = 5, per_document: int = 1, timeout: float | None = None
    ) -> list[pb.QueryResult]:
        """Searches the knowledge base: one result (with its hits) per query, in order."""
        request = pb.SearchKnowledgeBaseRequest(
            queries=[queries] if isinstance(queries, str) else list(queries),
            max_results=max_results,
            max_per_document=per_document,
        )
        return list(self._unary(self._search, request, timeout).results)

    def health(self, service: str = "", *, timeout: float | None = None) -> ServingStatus:
        """gRPC health of the whole server, or of a service (`dakota.content.v1.ContentService`
        is NOT_SERVING while the LLM's breaker is open)."""
        response = self._unary(self._health, health_pb2.HealthCheckRequest(service=service), timeout)
        return ServingStatus.of(response.status)

    # -- plumbing --------------------------------------------------------------------------

    def _or_default(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def _unary(
        self,
        call: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        job_id: str | None = None,
    ) -> _Response:
        try:
            return call(request, timeout=self._or_default(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise call_error(error, self._endpoint.target, job_id=job_id) from None

    def _open(self, plan: Reattach, timeout: float | None) -> grpc._CallIterator[pb.GenerateEvent]:
        if plan.watch is not None:
            return self._watch_job(plan.watch, timeout=timeout, metadata=self._metadata)
        assert plan.generate is not None
        return self._generate(plan.generate, timeout=timeout, metadata=self._metadata)


class JobStream(Iterator[Event]):
    """The events of one job, in order and each once, across dropped connections.

    `job_id` (once the first event arrived), `last_sequence` and `reattachments` say where
    it is; `close()` stops following (the job itself goes on: `Client.cancel` stops it).
    """

    def __init__(self, client: Client, follow: Follow, first: Reattach) -> None:
        self._client = client
        self._follow = follow
        self._call = client._open(first, follow.remaining())

    @property
    def job_id(self) -> str | None:
        return self._follow.job_id

    @property
    def last_sequence(self) -> int:
        return self._follow.last_sequence

    @property
    def reattachments(self) -> int:
        return self._follow.reattachments

    def __iter__(self) -> JobStream:
        return self

    def __next__(self) -> Event:
        try:
            while not self._follow.finished:
                try:
                    raw = next(self._call)
                except StopIteration:
                    self._reattach(None)
                    continue
                except grpc.RpcError as error:
                    self._reattach(error)
                    continue
                event = self._follow.accept(raw)
                if event is not None:
                    return event
        except KeyboardInterrupt:
            self._interrupted()
            raise
        raise StopIteration

    def close(self) -> None:
        """Stops following the job (its RPC is cancelled)."""
        self._follow.finished = True
        self._call.cancel()

    def _reattach(self, error: grpc.RpcError | None) -> None:
        plan = self._follow.reattach(error)
        time.sleep(plan.delay)
        self._call = self._client._open(plan, self._follow.remaining())

    def _interrupted(self) -> None:
        """Ctrl-C: the job is cancelled, as the CLI does."""
        self.close()
        if self._follow.job_id is not None:
            try:
                self._client.cancel(self._follow.job_id, timeout=2.0)
            except DakotaError:
                pass
