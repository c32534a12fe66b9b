"""SamplingParams: how one request picks its tokens and when it stops."""

from __future__ import annotations

from dataclasses import dataclass

from infire.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingParams:
    """temperature == 0 is greedy; top_k == 0 and top_p == 1 turn those filters off.

    A request with a `seed` draws from its own generator, so it gets the same
    tokens whatever else is in the batch.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens={self.max_tokens!r} is invalid; allowed: an integer >= 1")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < float("inf"):
            raise InvalidRequestError(f"temperature={self.temperature!r} is invalid; allowed: a finite number >= 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequestError(f"top_k={self.top_k!r} is invalid; allowed: an integer >= 0 (0 = off)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p={self.top_p!r} is invalid; allowed: 0 < top_p <= 1")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidRequestError(f"seed={self.seed!r} is invalid; allowed: an integer or None")
        stop = self.stop_token_ids
        if not isinstance(stop, (tuple, list)) or not all(isinstance(t, int) and t >= 0 for t in stop):
            raise InvalidRequestError(f"stop_token_ids={stop!r} is invalid; allowed: a tuple of token ids >= 0")
        object.__setattr__(self, "stop_token_ids", tuple(stop))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0
