"""The frontend over a real engine (tiny random Llama on CPU): streaming text, stop
strings, aborts, queueing beyond KV capacity, and a stopped engine."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.infire.frontend_fixtures import tiny_model_dir

from infire.engine import EngineConfig, LLMEngine, SamplingParams
from infire.errors import EngineDeadError, InvalidRequestError
from infire.frontend import Frontend
from infire.frontend.core import ContextLengthError, InvalidPromptError
from infire.tokenizer import REPLACEMENT_CHAR, Tokenizer

PROMPT = "Once upon a time there was"


def make_frontend(**engine_options) -> Frontend:
    model_dir = str(tiny_model_dir())
    engine = LLMEngine(EngineConfig(model=model_dir, device="cpu", **engine_options))
    return Frontend(engine, Tokenizer.from_dir(model_dir)).start()


@pytest.fixture(scope="module")
def frontend():
    frontend = make_frontend(num_kv_blocks=64)
    yield frontend
    frontend.shutdown()


def sampled(max_tokens: int, seed: int = 1) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, ignore_eos=True)


def run(frontend: Frontend, params: SamplingParams, stop=()) -> tuple[str, list[int], list]:
    chunks = list(frontend.generate(frontend.encode_prompt(PROMPT), params, stop))
    return "".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids], chunks


def wait_for_free_blocks(frontend: Frontend, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while frontend.stats.num_kv_blocks_used or frontend.stats.num_running or frontend.stats.num_waiting:
        assert time.monotonic() < deadline, f"KV blocks still in use: {frontend.stats}"
        time.sleep(0.05)


def test_streamed_text_equals_full_decode(frontend: Frontend) -> None:
    text, ids, chunks = run(frontend, sampled(32))
    assert text == frontend.tokenizer.decode(ids)
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
    last = chunks[-1]
    assert (last.finish_reason, last.num_output_tokens, last.num_prompt_tokens) == ("length", 32, len(frontend.encode_prompt(PROMPT)))
    assert all(not c.text.endswith(REPLACEMENT_CHAR) for c in chunks[:-1]), "half characters must be held back"


def test_stop_string_truncates_output_and_frees_blocks(frontend: Frontend) -> None:
    full, _, _ = run(frontend, sampled(48, seed=7))
    start = next(i for i in range(len(full) // 3, len(full)) if REPLACEMENT_CHAR not in full[i : i + 3])
    stop = full[start : start + 3]
    text, ids, chunks = run(frontend, sampled(48, seed=7), stop=["never-there", stop])
    assert text == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "stop" and len(ids) < 48
    wait_for_free_blocks(frontend)


def test_abort_mid_stream_frees_blocks(frontend: Frontend) -> None:
    async def scenario() -> str | None:
        stream = await frontend.submit(frontend.encode_prompt(PROMPT), sampled(1000))
        async for chunk in stream:
            if chunk.num_output_tokens >= 2 and not chunk.finished:
                frontend.abort(stream.request_id)
            if chunk.finished:
                return chunk.finish_reason
        return None

    assert asyncio.run(scenario()) == "abort"
    wait_for_free_blocks(frontend)


def test_requests_beyond_kv_capacity_queue_and_all_finish() -> None:
    # 4 blocks of 16 tokens; each request needs 2 blocks, so at most two run at once.
    frontend = make_frontend(num_kv_blocks=4, max_model_len=32)
    prompt = frontend.encode_prompt(PROMPT)

    async def one(seed: int) -> tuple[str, int]:
        stream = await frontend.submit(prompt, sampled(32 - len(prompt), seed))
        chunks = [c async for c in stream]
        return chunks[-1].finish_reason, chunks[-1].num_output_tokens

    async def many() -> list:
        return await asyncio.gather(*(one(seed) for seed in range(5)))

    try:
        results = asyncio.run(many())
    finally:
        frontend.shutdown()
    assert results == [("length", 32 - len(prompt))] * 5


def test_context_length_is_checked_before_queueing(frontend: Frontend) -> None:
    prompt = frontend.encode_prompt(PROMPT)
    with pytest.raises(ContextLengthError, match=f"context is {frontend.max_model_len} tokens"):
        list(frontend.generate(prompt, SamplingParams(max_tokens=frontend.max_model_len)))


def test_bad_prompts_are_request_errors(frontend: Frontend) -> None:
    with pytest.raises(InvalidPromptError, match="empty"):
        frontend.encode_prompt("")
    with pytest.raises(InvalidPromptError, match="outside the vocabulary"):
        frontend.encode_prompt([1, frontend.vocab_size])


def test_engine_rejection_reaches_the_caller(frontend: Frontend) -> None:
    async def duplicate_id() -> None:
        prompt = frontend.encode_prompt(PROMPT)
        first = await frontend.submit(prompt, sampled(100), request_id="same")
        try:
            await frontend.submit(prompt, sampled(4), request_id="same")
        finally:
            frontend.abort(first.request_id)

    with pytest.raises(InvalidRequestError, match="already in use"):
        asyncio.run(duplicate_id())


def test_stopped_frontend_refuses_requests() -> None:
    frontend = make_frontend(num_kv_blocks=8)
    frontend.shutdown()
    assert not frontend.is_alive
    with pytest.raises(EngineDeadError, match="shut down"):
        list(frontend.generate(frontend.encode_prompt(PROMPT), sampled(4)))
