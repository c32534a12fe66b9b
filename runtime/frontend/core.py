"""Frontend: prompt preparation, request submission and result streams over the engine loop."""

from __future__ import annotations

import asyncio
import queue
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Sequence

from infire.errors import EngineDeadError, InvalidRequestError
from infire.frontend.loop import AbortAllCommand, AbortCommand, AddCommand, EngineLoop
from infire.frontend.tracker import ACCEPTED, FrontendObserver, GenerationChunk, RequestTracker
from infire.tokenizer import Tokenizer

if TYPE_CHECKING:
    from infire.engine import EngineStats, LLMEngine, SamplingParams

# How often a waiting consumer checks that the engine is still alive.
LIVENESS_POLL_S = 1.0


class ContextLengthError(InvalidRequestError):
    """Prompt plus requested tokens do not fit the model's context."""

    code = "context_length_exceeded"
    param = "max_tokens"


class InvalidPromptError(InvalidRequestError):
    """The prompt is empty or holds token ids outside the vocabulary."""

    param = "prompt"


class Frontend:
    """Owns the engine (through its thread) and the tokenizer; serves many requests at once."""

    def __init__(self, engine: "LLMEngine", tokenizer: Tokenizer, observer: FrontendObserver | None = None):
        self.tokenizer = tokenizer
        self.max_model_len: int = engine.model_config.max_model_len
        self.vocab_size: int = engine.model_config.vocab_size
        self._loop = EngineLoop(engine, observer)

    # lifecycle

    def start(self) -> "Frontend":
        self._loop.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        """Abort every request, stop the engine thread; later submits raise EngineDeadError."""
        self._loop.stop(timeout)

    @property
    def is_alive(self) -> bool:
        return self._loop.is_alive()

    @property
    def stats(self) -> "EngineStats | None":
        return self._loop.stats

    # prompts

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a completion prompt: text (with the tokenizer's BOS) or ids as given."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise InvalidPromptError("the prompt is empty: give at least one token of text")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidPromptError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        return self.tokenizer.encode_chat(messages, add_generation_prompt)

    def default_max_tokens(self, num_prompt_tokens: int) -> int:
        """What is left of the context after the prompt (at least 1, so the length check speaks)."""
        return max(1, self.max_model_len - num_prompt_tokens)

    def check_length(self, num_prompt_tokens: int, max_tokens: int) -> None:
        total = num_prompt_tokens + max_tokens
        if total > self.max_model_len:
            raise ContextLengthError(
                f"this model's context is {self.max_model_len} tokens, but the request needs {total} "
                f"({num_prompt_tokens} in the prompt + max_tokens={max_tokens}); "
                "shorten the prompt or lower max_tokens"
            )

    # requests

    async def submit(
        self, prompt_ids: Sequence[int], params: "SamplingParams", stop: Sequence[str] = (), request_id: str | None = None
    ) -> "RequestStream":
        """Queue a request; returns once the engine accepted it (or raises why not)."""
        self.check_length(len(prompt_ids), params.max_tokens)
        stream = RequestStream(request_id or random_request_id(), self._loop, asyncio.get_running_loop())
        tracker = RequestTracker(stream.request_id, prompt_ids, stop, self.tokenizer, stream.sink)
        self._loop.submit(AddCommand(tracker, params))
        try:
            await stream.wait_accepted()
        except asyncio.CancelledError:  # the client left while the request was queued
            self.abort(stream.request_id)
            raise
        return stream

    def generate(self, prompt_ids: Sequence[int], params: "SamplingParams", stop: Sequence[str] = ()) -> Iterator[GenerationChunk]:
        """Synchronous generation (for the CLI): yields chunks until the request finishes."""
        self.check_length(len(prompt_ids), params.max_tokens)
        items: queue.Queue[object] = queue.Queue()
        tracker = RequestTracker(random_request_id(), prompt_ids, stop, self.tokenizer, items.put)
        self._loop.submit(AddCommand(tracker, params))
        try:
            yield from _sync_chunks(items, self._loop)
        finally:
            self.abort(tracker.request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks; unknown or finished ids are ignored."""
        self._send_quietly(AbortCommand(request_id))

    def abort_all(self) -> None:
        """Finish every request now (shutdown); safe to call from a signal handler."""
        self._send_quietly(AbortAllCommand())

    def _send_quietly(self, command: AbortCommand | AbortAllCommand) -> None:
        try:
            self._loop.submit(command)
        except EngineDeadError:
            pass  # a stopped engine has no requests left to abort


class RequestStream:
    """The asyncio side of one request: chunks pushed from the engine thread."""

    def __init__(self, request_id: str, engine_loop: EngineLoop, loop: asyncio.AbstractEventLoop):
        self.request_id = request_id
        self._engine_loop = engine_loop
        self._loop = loop
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self.finished = False

    def sink(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # event loop closed: nobody is listening any more
            pass

    async def wait_accepted(self) -> None:
        item = await self._next_item()
        if item is not ACCEPTED:
            raise AssertionError(f"expected the engine to accept {self.request_id} first, got {item!r}")

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[GenerationChunk]:
        while not self.finished:
            chunk = await self._next_item()
            assert isinstance(chunk, GenerationChunk)
            self.finished = chunk.finished
            yield chunk

    async def _next_item(self) -> object:
        while True:
            try:
                item = await asyncio.wait_for(self._items.get(), LIVENESS_POLL_S)
            except asyncio.TimeoutError:
                _raise_if_dead(self._engine_loop, self._items.empty())
                continue
            if isinstance(item, BaseException):
                self.finished = True
                raise item
            return item


def _sync_chunks(items: "queue.Queue[object]", engine_loop: EngineLoop) -> Iterator[GenerationChunk]:
    while True:
        try:
            item = items.get(timeout=LIVENESS_POLL_S)
        except queue.Empty:
            _raise_if_dead(engine_loop, items.empty())
            continue
        if isinstance(item, BaseException):
            raise item
        if item is ACCEPTED:
            continue
        assert isinstance(item, GenerationChunk)
        yield item
        if item.finished:
            return


def _raise_if_dead(engine_loop: EngineLoop, nothing_pending: bool) -> None:
    if engine_loop.error is not None and nothing_pending and not engine_loop.is_alive():
        raise EngineDeadError(str(engine_loop.error))


def random_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
