"""A request's life inside the engine, and the typed values it hands back."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tessera.server.engine.errors import EngineError


@dataclass
class StageTiming:
    stage: str
    queue_ms: float
    compute_ms: float


@dataclass
class Result:
    request_id: str
    value: Any
    timings: list[StageTiming]
    total_ms: float


@dataclass
class Progress:
    request_id: str
    stage: str
    completed: int
    total: int
    preview: Any = None


@dataclass
class StageState:
    """One request's passage through one OP."""
    arrived: float
    value: Any = None
    outputs: list[Any] = field(default_factory=list)
    remaining: int = 0
    first_start: float | None = None
    finished: float | None = None
    progress: dict[int, Any] | None = None  # stepping OPs: row index -> StepProgress
    progress_sent: float | None = None      # when the last Progress event went out


class Request:
    """Created by Engine.submit; await `result()` or iterate `events()`; `cancel()` to stop."""

    def __init__(self, request_id: str, payload: Any, deadline: float, want_events: bool):
        self.id = request_id
        self.payload = payload
        self.deadline = deadline  # loop.time()
        self.created = time.monotonic()
        self.stages: dict[str, StageState] = {}
        self.future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.events: asyncio.Queue[Progress | asyncio.Future] | None = None
        if want_events:
            self.events = asyncio.Queue()
            # The end goes into the same queue as the progress: a stream waits on one thing,
            # and leaves no helper task behind when its reader goes away.
            self.future.add_done_callback(self.events.put_nowait)
        self.timer: asyncio.TimerHandle | None = None
        self._engine_cancel = None  # set by the engine
        self.priority = 0           # lower is sooner (policy.py)
        self.rank = (self.created, self.created)  # where it stands in every queue (policy.py)
        self.trace_context: dict[str, str] | None = None  # the caller's W3C headers
        self.trace: Any = None      # the tracing observer's spans of this request, when on

    @property
    def done(self) -> bool:
        return self.future.done()

    def cancel(self, error: EngineError | None = None) -> None:
        """Stop the request: it leaves every channel and running batch; no more compute."""
        if not self.done and self._engine_cancel is not None:
            self._engine_cancel(self, error)

    async def result(self) -> Result:
        return await asyncio.shield(self.future)

    async def stream(self):
        """Yield Progress events as they come, then the Result (or raise its error)."""
        if self.events is None:
            raise RuntimeError("submit(..., events=True) to stream progress")
        while True:
            event = await self.events.get()
            if event is self.future:
                yield self.future.result()
                return
            yield event
