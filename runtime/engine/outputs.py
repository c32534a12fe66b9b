"""What the engine hands back: per-request token deltas and engine-wide counters."""

from __future__ import annotations

from dataclasses import dataclass

FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class RequestOutput:
    """The tokens a request gained in one step; `finish_reason` is set once it finished."""

    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None  # one of FINISH_REASONS once finished
    num_prompt_tokens: int
    num_output_tokens: int


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the scheduler and the KV cache."""

    num_running: int
    num_waiting: int
    num_kv_blocks_used: int
    num_kv_blocks_total: int
    kv_cache_usage: float  # used / total, 0..1
    num_preemptions: int  # since the engine started
