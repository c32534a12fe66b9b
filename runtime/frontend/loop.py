"""The engine thread: the only code that touches the engine, fed through a command queue."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from infire.errors import EngineDeadError, InvalidRequestError
from infire.frontend.tracker import ACCEPTED, FrontendObserver, RequestTracker

if TYPE_CHECKING:
    from infire.engine import EngineStats, LLMEngine, SamplingParams

logger = logging.getLogger(__name__)

# How long an idle engine thread sleeps before looking at its stop flag again.
IDLE_POLL_S = 0.5


@dataclass(frozen=True)
class AddCommand:
    tracker: RequestTracker
    params: "SamplingParams"


@dataclass(frozen=True)
class AbortCommand:
    request_id: str


@dataclass(frozen=True)
class AbortAllCommand:
    pass


Command = Union[AddCommand, AbortCommand, AbortAllCommand]


class EngineLoop:
    """Runs engine.step() in a daemon thread while requests are unfinished."""

    def __init__(self, engine: "LLMEngine", observer: FrontendObserver | None = None):
        self._engine = engine
        self._observer = observer
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._trackers: dict[str, RequestTracker] = {}
        self._thread = threading.Thread(target=self._run, name="infire-engine", daemon=True)
        self._stop_requested = False
        self.error: EngineDeadError | None = None  # set once the engine can no longer serve
        self.stats: "EngineStats | None" = None  # latest snapshot, read by other threads

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, command: Command) -> None:
        if self.error is not None:
            raise EngineDeadError(str(self.error))
        self._commands.put(command)

    def stop(self, timeout: float = 5.0) -> None:
        """Abort what is left, stop the thread, and refuse new requests."""
        self._stop_requested = True
        self._commands.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self.error is None:
            self.error = EngineDeadError("the engine is shut down and accepts no more requests")
        self._drain_pending(self.error)

    def _run(self) -> None:
        try:
            self._publish_stats()
            while not self._stop_requested:
                self._apply_commands(block=not self._engine.has_unfinished_requests())
                if self._engine.has_unfinished_requests() and not self._stop_requested:
                    self._dispatch(self._engine.step())
                self._publish_stats()
        except Exception as exc:  # a dead engine fails every request, not the process
            logger.exception("engine loop failed")
            self.error = EngineDeadError(f"the engine failed and stopped serving: {type(exc).__name__}: {exc}")
            self._fail_all(self.error)
            return
        self._abort_all()
        self._publish_stats()

    def _apply_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=IDLE_POLL_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while command is not None:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: Command) -> None:
        if isinstance(command, AddCommand):
            self._add(command)
        elif isinstance(command, AbortCommand):
            self._abort(command.request_id)
        else:
            self._abort_all()

    def _add(self, command: AddCommand) -> None:
        tracker = command.tracker
        try:
            self._engine.add_request(tracker.request_id, tracker.prompt_ids, command.params)
        except InvalidRequestError as exc:
            tracker.sink(exc)
            return
        self._trackers[tracker.request_id] = tracker
        tracker.sink(ACCEPTED)

    def _abort(self, request_id: str) -> None:
        tracker = self._trackers.pop(request_id, None)
        if tracker is None:
            return
        self._engine.abort_request(request_id)
        self._finish(tracker, tracker.abort())

    def _abort_all(self) -> None:
        for request_id in list(self._trackers):
            self._abort(request_id)

    def _dispatch(self, outputs) -> None:
        for output in outputs:
            tracker = self._trackers.get(output.request_id)
            if tracker is None:  # finished here already (stop string), engine still reporting
                continue
            chunk = tracker.process(output)
            if chunk.finished:
                del self._trackers[output.request_id]
                if not output.finished:  # a stop string ended it: free its KV blocks now
                    self._engine.abort_request(output.request_id)
                self._finish(tracker, chunk)
            else:
                tracker.sink(chunk)

    def _finish(self, tracker: RequestTracker, chunk) -> None:
        tracker.sink(chunk)
        if self._observer is not None:
            self._observer.on_request_finished(tracker.metrics)

    def _publish_stats(self) -> None:
        self.stats = self._engine.stats()
        if self._observer is not None:
            self._observer.on_engine_stats(self.stats)

    def _fail_all(self, error: EngineDeadError) -> None:
        for tracker in self._trackers.values():
            tracker.sink(EngineDeadError(str(error)))
        self._trackers.clear()
        self._drain_pending(error)

    def _drain_pending(self, error: EngineDeadError) -> None:
        """Refuse requests that were queued but never reached the engine."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, AddCommand):
                command.tracker.sink(EngineDeadError(str(error)))
