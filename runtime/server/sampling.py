"""API sampling fields -> engine SamplingParams, with OpenAI defaults and named errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infire.server.protocol import SamplingFields, UnsupportedParameterError

if TYPE_CHECKING:
    from infire.engine import SamplingParams


class InvalidParameterError(UnsupportedParameterError):
    """A parameter value outside its allowed range."""


def to_sampling_params(body: SamplingFields, max_tokens: int, eos_token_id: int | None) -> "SamplingParams":
    """Engine parameters for a request; the tokenizer's EOS also ends generation."""
    from infire.engine import SamplingParams

    if max_tokens <= 0:
        raise InvalidParameterError("max_tokens", f"max_tokens must be at least 1, got {max_tokens}")
    stop_token_ids = () if eos_token_id is None or body.ignore_eos else (eos_token_id,)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_k=0 if body.top_k in (None, -1) else body.top_k,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop_token_ids=stop_token_ids,
        ignore_eos=body.ignore_eos,
    )
