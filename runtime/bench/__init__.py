"""Load generator for any OpenAI-compatible server: Poisson arrivals of streaming
completions, timed per token (TTFT, TPOT, ITL, end-to-end latency, throughput)."""

from infire.bench.config import BenchConfig, BenchError
from infire.bench.report import BenchReport
from infire.bench.runner import run_bench

__all__ = ["BenchConfig", "BenchError", "BenchReport", "run_bench"]
