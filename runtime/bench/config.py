"""What a benchmark run sends: how many requests, how fast, how long each."""

from __future__ import annotations

import math
from dataclasses import dataclass

from infire.errors import ConfigError, InfireError


class BenchError(InfireError):
    """The benchmark cannot run: server unreachable, no model served."""


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark against `url`; request_rate is requests per second (inf: all at once)."""

    url: str
    model: str | None = None  # None: the first model of GET /v1/models
    num_requests: int = 100
    request_rate: float = math.inf
    input_len: int = 128  # words of the random prompt, about one token each
    output_len: int = 128  # max_tokens of every request
    max_concurrency: int | None = None
    ignore_eos: bool = False  # send the vLLM/infire extension so every request runs to output_len
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url={self.url!r} is invalid; allowed: http://HOST:PORT or https://...")
        for name in ("num_requests", "input_len", "output_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is invalid; allowed: an integer >= 1")
        if not self.request_rate > 0:
            raise ConfigError(f"request_rate={self.request_rate!r} is invalid; allowed: > 0 requests/s, or inf")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency={self.max_concurrency!r} is invalid; allowed: >= 1, or unset")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s={self.timeout_s!r} is invalid; allowed: > 0 seconds")

    @property
    def base_url(self) -> str:
        """The URL without a trailing / or /v1, so both spellings work."""
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url
