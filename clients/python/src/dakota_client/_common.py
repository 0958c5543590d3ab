"""What the sync and the async client share: addresses, credentials, requests, events, and
following a job across dropped connections."""

from __future__ import annotations

import datetime
import enum
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import TypedDict, Union

import grpc

from . import content_pb2 as pb
from .errors import DakotaError, Unavailable, code_of, error_for, from_rpc_error

_SERVICE = pb.DESCRIPTOR.services_by_name["ContentService"]
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

#: Re-attach attempts after dropped streams, per job, before giving up (as the `dakota` CLI).
MAX_REATTACH = 5
_FIRST_DELAY, _MAX_DELAY = 0.2, 3.0

#: The server accepts messages up to 8 MiB; gRPC's default receive limit is 4 MiB.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.primary_user_agent", "dakota-client-python"),
]

# What grpc says when no connection could be made at all: nothing reached the server.
_NEVER_CONNECTED = ("failed to connect to all addresses", "DNS resolution failed")

CaCert = Union[str, "os.PathLike[str]", bytes]


def method(name: str) -> str:
    """The path of a ContentService RPC, from the generated descriptor (a typo fails at import)."""
    return f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name[name].name}"


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: a gRPC target, and the root certificates for TLS (None: plaintext)."""

    target: str
    tls: bool
    root_certificates: bytes | None

    @classmethod
    def parse(cls, target: str, ca_cert: CaCert | None) -> Endpoint:
        """`https://host:port` is TLS, `http://host:port` plaintext (as the CLI's --server); any
        other gRPC target (`host:port`, `dns:///host:port`) is TLS when `ca_cert` is given."""
        pem = _read_ca(ca_cert) if ca_cert is not None else None
        if target.startswith("https://"):
            return cls(target.removeprefix("https://").rstrip("/"), True, pem)
        if target.startswith("http://"):
            if pem is not None:
                raise ValueError(f"ca_cert is for a TLS server, but {target!r} is plaintext: use https://")
            return cls(target.removeprefix("http://").rstrip("/"), False, None)
        return cls(target, pem is not None, pem)


def _read_ca(ca_cert: CaCert) -> bytes:
    if isinstance(ca_cert, bytes):
        return ca_cert
    path = os.fspath(ca_cert)
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ValueError(
            f"ca_cert {path}: {error.strerror} (a PEM file of the CA that signed the server's certificate)"
        ) from error


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <key>` when there is a key."""
    if api_key is None:
        return ()
    key = api_key.strip()
    if not key or not all(" " <= c <= "~" for c in key):
        raise ValueError("the API key is empty or has characters that cannot be sent in a header (use the key as issued)")
    return (("authorization", f"Bearer {key}"),)


def generate_request(topic: str, options: JobOptions) -> pb.GenerateRequest:
    """The request of a job; a random idempotency key unless one is given, so that a retry
    re-attaches to the job instead of starting a second one."""
    request = pb.GenerateRequest(
        topic=topic,
        audience=options.get("audience", ""),
        tone=options.get("tone", ""),
        custom_instructions=options.get("custom_instructions", ""),
        include_social=options.get("include_social", True),
        include_summary=options.get("include_summary", True),
        skip_web_search=options.get("skip_web_search", False),
        idempotency_key=options.get("idempotency_key") or str(uuid.uuid4()),
    )
    if "word_count" in options:
        request.word_count = options["word_count"]
    if "max_total_tokens" in options:
        request.max_total_tokens = options["max_total_tokens"]
    return request


EventBody = Union[
    pb.JobStarted,
    pb.PhaseStarted,
    pb.AgentStarted,
    pb.AgentCompleted,
    pb.ContentDelta,
    pb.Warning,
    pb.PhaseCompleted,
    pb.Completed,
    pb.Failed,
]


@dataclass(frozen=True)
class Event:
    """One event of a job, its `oneof` unpacked into `body`:

        match event.body:
            case PhaseStarted(phase=phase): ...
            case Completed(article=article): ...

    `kind` is the oneof's field name (`"phase_started"`); `raw` the `GenerateEvent` itself.
    """

    job_id: str
    sequence: int
    progress: int
    timestamp: datetime.datetime
    kind: str
    body: EventBody
    raw: pb.GenerateEvent = field(repr=False, compare=False)

    @property
    def final(self) -> bool:
        """True for the job's last event, `Completed` or `Failed`."""
        return self.kind in ("completed", "failed")

    @classmethod
    def unpack(cls, raw: pb.GenerateEvent) -> Event | None:
        """The event, or None for a kind this version of the package does not know."""
        kind = raw.WhichOneof("event")
        if kind is None:
            return None
        body: EventBody = getattr(raw, kind)
        timestamp = raw.timestamp.ToDatetime(tzinfo=datetime.timezone.utc)
        return cls(raw.job_id, raw.sequence, raw.progress, timestamp, kind, body, raw)


def failure(event: Event, failed: pb.Failed) -> DakotaError:
    """The error a `Failed` event stands for."""
    delay = None
    if failed.HasField("retry_delay"):
        delay = failed.retry_delay.seconds + failed.retry_delay.nanos / 1e9
    return error_for(
        code_of(failed.code), failed.message, job_id=event.job_id, phase=failed.phase, retry_delay=delay
    )


class ServingStatus(enum.IntEnum):
    """`grpc.health.v1.HealthCheckResponse.ServingStatus`."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3

    def __str__(self) -> str:
        return self.name

    @classmethod
    def of(cls, value: int) -> ServingStatus:
        return cls(value) if value in cls._value2member_map_ else cls.UNKNOWN


class JobOptions(TypedDict, total=False):
    """The options of `generate` and `run` (each optional; the server's defaults apply).

    word_count: target length, 100-10000 words (1500).
    audience: who the article is for ("institutional investors and financial professionals").
    tone: its voice ("professional yet conversational").
    custom_instructions: extra instructions for every agent, at most 1000 characters.
    include_social, include_summary: the social posts and the summary (True).
    skip_web_search: no web research (False).
    max_total_tokens: bound on the LLM tokens the job may spend (none).
    idempotency_key: re-attach to the job started with this key instead of starting
        another (a random key by default, so that a retry never starts a second job).
    timeout: seconds the whole job may take, re-attaches included; the server stops the
        job when it passes (the client's `timeout` by default).
    """

    word_count: int
    audience: str
    tone: str
    custom_instructions: str
    include_social: bool
    include_summary: bool
    skip_web_search: bool
    max_total_tokens: int
    idempotency_key: str
    timeout: float


def call_error(error: grpc.RpcError, target: str, *, job_id: str | None = None) -> DakotaError:
    """The error of a refused call, saying so when the server was never reached."""
    details = error.details() or ""
    if any(phrase in details for phrase in _NEVER_CONNECTED):
        return from_rpc_error(error, prefix=f"cannot reach the Dakota server at {target}: ")
    return from_rpc_error(error, job_id=job_id)


def is_dropped(error: grpc.RpcError) -> bool:
    """A connection that went away (or a server that is draining), not a server that said no."""
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    details = error.details() or ""
    return error.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) and (
        "RST_STREAM" in details or "Stream removed" in details
    )


@dataclass(frozen=True)
class Reattach:
    """The next call of a followed job: after `delay` seconds, one of the two requests."""

    delay: float
    watch: pb.WatchJobRequest | None = None
    generate: pb.GenerateRequest | None = None


class Follow:
    """The state of following one job: the events in order without duplicates, and what to
    call after a dropped stream (`WatchJob` after the last sequence seen, or `Generate` again
    with the same idempotency key while the job id is not known yet)."""

    def __init__(
        self,
        target: str,
        *,
        request: pb.GenerateRequest | None = None,
        job_id: str | None = None,
        after_sequence: int = 0,
        timeout: float | None = None,
    ) -> None:
        self.target = target
        self.request = request
        self.job_id = job_id
        self.last_sequence = after_sequence
        self.reattachments = 0
        self.finished = False
        self._received = False
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left of the timeout (None: no timeout); DeadlineExceeded once it passed."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "the timeout passed", job_id=self.job_id)
        return left

    def accept(self, raw: pb.GenerateEvent) -> Event | None:
        """The event to hand out, or None for one seen before a re-attach (replayed) or unknown."""
        self._received = True
        final = raw.WhichOneof("event") in ("completed", "failed")
        # A re-attached stream replays from the start (Generate) or after the last sequence;
        # the final event is sent again to a follower past the end, and is kept.
        if raw.sequence <= self.last_sequence and not final:
            return None
        self.last_sequence = max(self.last_sequence, raw.sequence)
        if self.job_id is None:
            self.job_id = raw.job_id
        self.finished = final
        return Event.unpack(raw)

    def reattach(self, error: grpc.RpcError | None) -> Reattach:
        """What to call after the stream ended with `error` (None: it ended before the job's
        final event); raises the error when re-attaching cannot help."""
        if error is not None and not is_dropped(error):
            raise from_rpc_error(error, job_id=self.job_id)
        if error is not None and not self._received and self.reattachments == 0:
            # Nothing reached the server: no job to re-attach to.
            details = error.details() or ""
            if any(phrase in details for phrase in _NEVER_CONNECTED):
                raise call_error(error, self.target)
        if self.reattachments >= MAX_REATTACH:
            raise self._give_up(error)
        self.reattachments += 1
        delay = min(_FIRST_DELAY * 2 ** (self.reattachments - 1), _MAX_DELAY)
        if error is not None:
            hinted = from_rpc_error(error).retry_delay
            delay = max(delay, hinted or 0.0)
        left = self.remaining()
        if left is not None:
            delay = min(delay, left)
        if self.job_id is not None:
            watch = pb.WatchJobRequest(job_id=self.job_id, after_sequence=self.last_sequence)
            return Reattach(delay, watch=watch)
        if self.request is not None and self.request.idempotency_key:
            return Reattach(delay, generate=self.request)
        raise self._give_up(error)

    def _give_up(self, error: grpc.RpcError | None) -> DakotaError:
        resume = ""
        if self.job_id is not None:
            resume = f"; resume with watch({self.job_id!r}, after={self.last_sequence})"
        note = f" (after {self.reattachments} re-attach attempts{resume})"
        if error is None:
            return Unavailable(grpc.StatusCode.UNAVAILABLE, "the server closed the stream before the job ended" + note,
                               job_id=self.job_id)
        cause = from_rpc_error(error, job_id=self.job_id)
        return error_for(cause.code, cause.message + note, details=cause.details, job_id=self.job_id)
