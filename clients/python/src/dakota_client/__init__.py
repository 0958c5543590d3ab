"""Typed Python client of the Dakota Content Service (`dakota.content.v1`).

    from dakota_client import Client, write_folder

    with Client("127.0.0.1:50051") as client:
        article = client.run("Private credit and liquidity for pension funds", word_count=800)
    print(write_folder(article, "out"))

`Client` (blocking) and `AsyncClient` (`grpc.aio`) start jobs and follow them across dropped
connections; `generate` yields `Event`s whose `body` is the unpacked oneof (`JobStarted`,
`PhaseStarted`, ..., `Completed` or `Failed`); errors are `DakotaError`s by status code
(`dakota_client.errors`); `write_folder` writes the article folder of `dakota generate --out`.
Every message of the API is in `dakota_client.content_pb2` (with type stubs).
"""

from . import content_pb2, errors
from ._aio import AsyncClient, AsyncJobStream
from ._client import Client, JobStream
from ._common import Event, EventBody, JobOptions, ServingStatus
from ._folder import folder_slug, write_folder
from .content_pb2 import (
    AgentCompleted,
    AgentStarted,
    Article,
    Claim,
    Completed,
    ContentDelta,
    Failed,
    GenerateEvent,
    GenerateRequest,
    JobStarted,
    JobState,
    PhaseCompleted,
    PhaseStarted,
    QueryResult,
    SearchHit,
    Source,
    Warning,
)
from .errors import (
    Cancelled,
    DakotaError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__version__ = "0.1.0"

# `Warning` (the event) is importable by name but left out of `*`, which would shadow the
# built-in warning category.
__all__ = [
    "AgentCompleted",
    "AgentStarted",
    "Article",
    "AsyncClient",
    "AsyncJobStream",
    "Cancelled",
    "Claim",
    "Client",
    "Completed",
    "ContentDelta",
    "DakotaError",
    "DeadlineExceeded",
    "Event",
    "EventBody",
    "Failed",
    "FailedPrecondition",
    "FieldViolation",
    "GenerateEvent",
    "GenerateRequest",
    "Internal",
    "InvalidArgument",
    "JobOptions",
    "JobStarted",
    "JobState",
    "JobStream",
    "NotFound",
    "PermissionDenied",
    "PhaseCompleted",
    "PhaseStarted",
    "QueryResult",
    "ResourceExhausted",
    "SearchHit",
    "ServingStatus",
    "Source",
    "Unauthenticated",
    "Unavailable",
    "content_pb2",
    "errors",
    "folder_slug",
    "write_folder",
]
