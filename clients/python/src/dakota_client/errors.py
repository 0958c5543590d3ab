"""Errors: one class per gRPC status code a caller acts on, all under `DakotaError`.

A refused call and a failed job raise the same classes: `client.run()` raises `Cancelled` for a
cancelled job and `Unavailable` for one whose LLM was unreachable, with `job_id` and `phase` set.
The `google.rpc` details of a status (sent in the `grpc-status-details-bin` trailer) are decoded:
`field_violations` from `BadRequest`, `retry_delay` from `RetryInfo`, and every detail in `details`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

_DETAILS_TRAILER = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (`google.rpc.BadRequest.FieldViolation`)."""

    field: str
    description: str


class DakotaError(Exception):
    """A call the server refused or a job that failed.

    Attributes:
        code: the gRPC status code.
        message: the server's message.
        details: the decoded `google.rpc` details (`BadRequest`, `RetryInfo`, ...); an
            `Any` for a detail of a type this package does not know.
        field_violations: the `BadRequest` violations, one per bad field.
        retry_delay: seconds to wait before retrying (`RetryInfo`, or a failed job's
            `retry_delay`), when the server gave one.
        job_id: the job, when the error is about one.
        phase: for a failed job, the phase that was running ("" when none was); None for
            a refused call.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        details: tuple[Message, ...] = (),
        job_id: str | None = None,
        phase: str | None = None,
        retry_delay: float | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.details = details
        self.job_id = job_id
        self.phase = phase
        self.field_violations = tuple(
            FieldViolation(v.field, v.description)
            for detail in details
            if isinstance(detail, error_details_pb2.BadRequest)
            for v in detail.field_violations
        )
        if retry_delay is None:
            retry_delay = next(
                (_seconds(d.retry_delay) for d in details if isinstance(d, error_details_pb2.RetryInfo)),
                None,
            )
        self.retry_delay = retry_delay
        super().__init__(self._describe())

    def _describe(self) -> str:
        name = self.code.name
        if self.field_violations:
            text = f"invalid request ({name}):" + "".join(
                f"\n  {v.field}: {v.description}" for v in self.field_violations
            )
        elif self.phase is not None:  # a failed job's
            where = f" in phase {self.phase}" if self.phase else ""
            text = f"job {self.job_id} failed{where} ({name}): {self.message}"
        else:
            text = f"{self.message or 'no message'} ({name})"
        if self.retry_delay is not None:
            text += f"\n  retry after {self.retry_delay:g} s"
        return text


class InvalidArgument(DakotaError):
    """INVALID_ARGUMENT (or OUT_OF_RANGE): see `field_violations`."""


class NotFound(DakotaError):
    """NOT_FOUND: an unknown job (or one that belongs to another API key, or expired)."""


class FailedPrecondition(DakotaError):
    """FAILED_PRECONDITION: e.g. `get_article` while the job runs, or a job with nothing to write from."""


class ResourceExhausted(DakotaError):
    """RESOURCE_EXHAUSTED: over capacity, quota or token budget; see `retry_delay`."""


class Unauthenticated(DakotaError):
    """UNAUTHENTICATED: no API key, or one the server does not accept."""


class PermissionDenied(DakotaError):
    """PERMISSION_DENIED."""


class Unavailable(DakotaError):
    """UNAVAILABLE: the server cannot be reached, is starting or draining, or a dependency is down."""


class DeadlineExceeded(DakotaError):
    """DEADLINE_EXCEEDED: the call's (or the job's) timeout passed."""


class Cancelled(DakotaError):
    """CANCELLED: the job was cancelled (`cancel`, or its caller left)."""


class Internal(DakotaError):
    """INTERNAL, UNKNOWN or DATA_LOSS: a fault on the server."""


_BY_CODE: dict[grpc.StatusCode, type[DakotaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}


def error_for(
    code: grpc.StatusCode,
    message: str,
    *,
    details: tuple[Message, ...] = (),
    job_id: str | None = None,
    phase: str | None = None,
    retry_delay: float | None = None,
) -> DakotaError:
    """The error of `code`, of the class that names it."""
    cls = _BY_CODE.get(code, DakotaError)
    return cls(code, message, details=details, job_id=job_id, phase=phase, retry_delay=retry_delay)


def code_of(number: int) -> grpc.StatusCode:
    """The status code of a `google.rpc.Code` number (UNKNOWN for a number gRPC does not define)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def from_rpc_error(
    error: grpc.RpcError, *, job_id: str | None = None, prefix: str = ""
) -> DakotaError:
    """The `DakotaError` of a failed call (sync or `grpc.aio`), its details decoded."""
    code = error.code()
    message = prefix + (error.details() or "")
    return error_for(code, message, details=_details(_trailers(error)), job_id=job_id)


def _trailers(error: grpc.RpcError) -> list[tuple[str, str | bytes]]:
    if isinstance(error, grpc.aio.AioRpcError):
        return list(error.trailing_metadata() or ())
    # The blocking API's trailers are (key, value) named tuples.
    return [(item.key, item.value) for item in error.trailing_metadata() or ()]


def _details(trailers: Iterable[tuple[str, str | bytes]]) -> tuple[Message, ...]:
    """The `google.rpc.Status` details in a call's trailers."""
    for key, value in trailers:
        if key == _DETAILS_TRAILER and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return ()
            return tuple(_unpack(detail) for detail in status.details)
    return ()


def _unpack(detail: any_pb2.Any) -> Message:
    """A detail as its own message when it is one of `google.rpc`'s error details."""
    name = detail.TypeName()
    prefix = "google.rpc."
    cls = getattr(error_details_pb2, name[len(prefix):], None) if name.startswith(prefix) else None
    if isinstance(cls, type) and issubclass(cls, Message):
        unpacked = cls()
        if detail.Unpack(unpacked):
            return unpacked
    return detail


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9
