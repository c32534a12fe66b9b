"""Per-request output processing: token ids -> text deltas, stop strings, timing."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from infire.tokenizer import IncrementalDetokenizer, Tokenizer

if TYPE_CHECKING:
    from infire.engine import EngineStats, RequestOutput


@dataclass(frozen=True)
class GenerationChunk:
    """What one engine step added to a request: text since the previous chunk, and ids."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" once finished
    num_prompt_tokens: int
    num_output_tokens: int


@dataclass
class RequestMetrics:
    """Timestamps (time.monotonic) and counts of one request, reported when it finishes."""

    arrival_time: float
    num_prompt_tokens: int
    first_token_time: float | None = None
    finish_time: float | None = None
    num_output_tokens: int = 0
    finish_reason: str | None = None
    inter_token_latencies: list[float] = field(default_factory=list)

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    @property
    def time_per_output_token(self) -> float | None:
        """Mean decode time per token after the first; None with fewer than two tokens."""
        if self.first_token_time is None or self.finish_time is None or self.num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.num_output_tokens - 1)


class FrontendObserver(Protocol):
    """Receives request metrics and engine stats (the server turns them into Prometheus)."""

    def on_request_finished(self, metrics: RequestMetrics) -> None: ...

    def on_engine_stats(self, stats: "EngineStats") -> None: ...


# A sink receives, in order: ACCEPTED or an exception, then GenerationChunks.
Sink = Callable[[object], None]
ACCEPTED = object()


class RequestTracker:
    """Follows one request: detokenizes its tokens, applies stop strings, times it."""

    def __init__(self, request_id: str, prompt_ids: Sequence[int], stop: Sequence[str], tokenizer: Tokenizer, sink: Sink):
        self.request_id = request_id
        self.prompt_ids = list(prompt_ids)
        self.sink = sink
        self.metrics = RequestMetrics(arrival_time=time.monotonic(), num_prompt_tokens=len(self.prompt_ids))
        self._stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._detokenizer = IncrementalDetokenizer(tokenizer, self.prompt_ids)
        self._text = ""
        self._num_emitted_chars = 0
        self._last_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.metrics.finish_reason is not None

    def process(self, output: "RequestOutput") -> GenerationChunk:
        """Turn one engine output into a chunk; chunk.finished may come from a stop string."""
        self._record_tokens(len(output.new_token_ids))
        previous_len = len(self._text)
        self._text += self._detokenizer.add(output.new_token_ids)
        if output.finished:
            self._text += self._detokenizer.flush()
        finish_reason = output.finish_reason if output.finished else None
        if self._truncate_at_stop(previous_len):
            finish_reason = "stop"
        return self._emit(tuple(output.new_token_ids), finish_reason)

    def abort(self) -> GenerationChunk:
        """Finish the request without further tokens (client gone, shutdown)."""
        return self._emit((), "abort")

    def _record_tokens(self, num_new: int) -> None:
        if num_new == 0:
            return
        now = time.monotonic()
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
            num_gaps, gap = num_new - 1, 0.0
        else:
            num_gaps, gap = num_new, (now - self._last_token_time) / num_new
        self.metrics.inter_token_latencies.extend([gap] * num_gaps)
        self.metrics.num_output_tokens += num_new
        self._last_token_time = now

    def _truncate_at_stop(self, previous_len: int) -> bool:
        """Cut the text before the first stop string; the search covers only new text."""
        if not self._stop:
            return False
        start = max(0, previous_len - self._holdback)
        hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
        if not hits:
            return False
        self._text = self._text[: min(hits)]
        return True

    def _emit(self, token_ids: tuple[int, ...], finish_reason: str | None) -> GenerationChunk:
        finished = finish_reason is not None
        # Hold back a possible beginning of a stop string until the next tokens decide it.
        end = len(self._text) if finished else max(self._num_emitted_chars, len(self._text) - self._holdback)
        text, self._num_emitted_chars = self._text[self._num_emitted_chars : end], end
        if finished:
            self.metrics.finish_time = time.monotonic()
            self.metrics.finish_reason = finish_reason
        return GenerationChunk(
            request_id=self.request_id,
            text=text,
            token_ids=token_ids,
            finished=finished,
            finish_reason=finish_reason,
            num_prompt_tokens=len(self.prompt_ids),
            num_output_tokens=self.metrics.num_output_tokens,
        )
