"""Prometheus metrics of the server: request latencies, token counts, engine load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from infire.frontend import RequestMetrics

if TYPE_CHECKING:
    from infire.engine import EngineStats

PREFIX = "infire_"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """All metrics in a registry of their own, so several servers can live in one process."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=self.registry).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=self.registry).labels(model_name)

        self.ttft = histogram("time_to_first_token_seconds", "Time from arrival to the first output token.", TTFT_BUCKETS)
        self.tpot = histogram("time_per_output_token_seconds", "Mean time per output token after the first.", TOKEN_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between consecutive output tokens.", TOKEN_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the end of a request.", E2E_BUCKETS)
        self.running = gauge("num_requests_running", "Requests the engine is generating for.")
        self.waiting = gauge("num_requests_waiting", "Requests queued in the engine, waiting for KV blocks.")
        self.kv_usage = gauge("kv_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1).")
        self.kv_blocks_used = gauge("num_kv_blocks_used", "KV cache blocks in use.")
        self.preemptions = gauge("num_preemptions", "Requests preempted so far to free KV blocks.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated for finished requests.")
        self._success = Counter(
            PREFIX + "request_success", "Finished requests by finish reason.", labels + ["finish_reason"], registry=self.registry
        )
        self._model_name = model_name

    def on_request_finished(self, metrics: RequestMetrics) -> None:
        """Called from the engine thread; prometheus_client metrics are thread-safe."""
        self.prompt_tokens.inc(metrics.num_prompt_tokens)
        self.generation_tokens.inc(metrics.num_output_tokens)
        self._success.labels(self._model_name, metrics.finish_reason or "abort").inc()
        for value, histogram in (
            (metrics.time_to_first_token, self.ttft),
            (metrics.time_per_output_token, self.tpot),
            (metrics.e2e_latency, self.e2e),
        ):
            if value is not None:
                histogram.observe(value)
        for gap in metrics.inter_token_latencies:
            self.itl.observe(gap)

    def on_engine_stats(self, stats: "EngineStats") -> None:
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        self.kv_blocks_used.set(stats.num_kv_blocks_used)
        self.preemptions.set(stats.num_preemptions)

    def render(self) -> bytes:
        return generate_latest(self.registry)
