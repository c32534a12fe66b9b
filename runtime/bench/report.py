"""Benchmark results: throughput and latency percentiles, as a dict ready for JSON."""

from __future__ import annotations

import dataclasses
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from infire.bench.client import RequestResult
from infire.bench.config import BenchConfig

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2e")


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds; all zero when there was nothing to measure."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> "LatencyStats":
        if not seconds:
            return cls(0.0, 0.0, 0.0, 0.0)
        ms = np.asarray(seconds) * 1000.0
        return cls(float(ms.mean()), *(float(np.percentile(ms, p)) for p in PERCENTILES))


@dataclass(frozen=True)
class BenchReport:
    """Everything a run measured; `as_dict()` is what --json writes."""

    url: str
    model: str
    date: str
    host: str
    config: dict
    num_requests: int
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests per second
    input_throughput: float  # prompt tokens per second
    output_throughput: float  # generated tokens per second
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    errors: list[str]  # the first few distinct failure messages

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(config: BenchConfig, model: str, results: list[RequestResult], duration_s: float) -> BenchReport:
    ok = [r for r in results if r.ok]
    input_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    config_dict = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in dataclasses.asdict(config).items()}
    return BenchReport(
        url=config.base_url,
        model=model,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=platform.node(),
        config=config_dict,
        num_requests=len(results),
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(ok) * per_s,
        input_throughput=input_tokens * per_s,
        output_throughput=output_tokens * per_s,
        total_token_throughput=(input_tokens + output_tokens) * per_s,
        ttft=LatencyStats.of([r.ttft for r in ok if r.ttft is not None]),
        tpot=LatencyStats.of([t for t in (r.tpot for r in ok) if t is not None]),
        itl=LatencyStats.of([gap for r in ok for gap in r.itls]),
        e2e=LatencyStats.of([r.latency for r in ok]),
        errors=sorted({r.error for r in results if r.error})[:5],
    )
