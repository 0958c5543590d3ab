"""A job's progress for people: a tqdm bar when tqdm is installed (`tqdm.auto`, so a widget in
Jupyter), otherwise one plain line per step, as the CLI prints when not on a terminal.

    with Client(server) as client, Progress() as progress:
        article = client.run("Private credit", on_event=progress)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, TextIO

from google.protobuf import duration_pb2

from . import content_pb2 as pb
from ._common import Event
from .errors import code_of


class _Bar(Protocol):
    n: float

    def update(self, n: float) -> object: ...
    def set_description_str(self, desc: str) -> object: ...
    def write(self, s: str, file: TextIO | None = None) -> object: ...
    def close(self) -> object: ...


def _tqdm() -> Callable[..., _Bar] | None:
    try:
        module = importlib.import_module("tqdm.auto")
    except ImportError:
        return None
    factory: Callable[..., _Bar] = module.tqdm
    return factory


def _ms(duration: duration_pb2.Duration) -> int:
    return duration.seconds * 1000 + duration.nanos // 1_000_000


def describe(event: Event) -> str | None:
    """One line about an event worth showing (None for agent starts and the writer's text)."""
    match event.body:
        case pb.JobStarted(topic=topic, phases=phases):
            return f"job {event.job_id}: {topic!r}, {len(phases)} phases planned"
        case pb.PhaseStarted(phase=phase, iteration=iteration):
            return f"phase {phase}" + (f" (pass {iteration})" if iteration > 1 else "")
        case pb.AgentCompleted(agent=agent, duration=duration, summary=summary):
            return f"  {agent} done in {_ms(duration)} ms" + (f": {summary}" if summary else "")
        case pb.Warning(code=code, message=message):
            return f"warning {code}: {message}"
        case pb.PhaseCompleted(phase=phase, duration=duration):
            return f"phase {phase} done in {_ms(duration)} ms"
        case pb.Completed(article=article):
            return f"completed: {article.title!r}, {article.metadata.content.word_count} words"
        case pb.Failed(code=code, message=message):
            return f"failed ({code_of(code).name}): {message}"
    return None


class Progress:
    """Call it with each event (`client.run(topic, on_event=progress)`, or in your own loop).

    Args:
        bar: True for a tqdm bar (tqdm must be installed), False for plain lines; by
            default a bar when tqdm is installed.
        file: where to write (standard error by default).
    """

    def __init__(self, *, bar: bool | None = None, file: TextIO | None = None) -> None:
        self._file = file
        self._closed = False
        factory = _tqdm() if bar is not False else None
        if bar and factory is None:
            raise RuntimeError("Progress(bar=True) needs tqdm: pip install tqdm")
        self._bar: _Bar | None = None
        if factory is not None:
            self._bar = factory(total=100, file=file, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}]")

    def __call__(self, event: Event) -> None:
        if self._closed:
            return
        line = describe(event)
        if self._bar is None:
            if line is not None:
                print(f"[{event.progress:3}%] {line}", file=self._file or sys.stderr, flush=True)
            return
        if isinstance(event.body, pb.PhaseStarted):
            self._bar.set_description_str(event.body.phase)
        if event.progress > self._bar.n:
            self._bar.update(event.progress - self._bar.n)
        if event.final:
            self.close()
            print(line, file=self._file or sys.stderr, flush=True)
        elif isinstance(event.body, pb.Warning) and line is not None:
            self._bar.write(line, file=self._file or sys.stderr)

    def close(self) -> None:
        """Ends the bar (at the job's final event, or on leaving a `with` block)."""
        if self._bar is not None and not self._closed:
            self._bar.close()
        self._closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
