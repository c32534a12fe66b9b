"""Send the benchmark's requests with Poisson arrivals and gather their results."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time

import httpx

from infire.bench.client import RequestResult, random_prompt, send_completion
from infire.bench.config import BenchConfig, BenchError
from infire.bench.report import BenchReport, summarize


def run_bench(config: BenchConfig) -> BenchReport:
    """Run the whole benchmark (blocking) and summarize it."""
    return asyncio.run(_run(config))


async def _run(config: BenchConfig) -> BenchReport:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(config.timeout_s), limits=limits) as client:
        model = config.model or await served_model(client, config.base_url)
        start = time.perf_counter()
        results = await _send_all(client, config, model)
        duration = time.perf_counter() - start
    return summarize(config, model, results, duration)


async def served_model(client: httpx.AsyncClient, base_url: str) -> str:
    """The first model of GET /v1/models."""
    url = f"{base_url}/v1/models"
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise BenchError(f"cannot reach {url}: {type(exc).__name__} {exc}; is the server running?") from exc
    models = response.json().get("data", []) if response.status_code == 200 else []
    if not models:
        raise BenchError(f"GET {url} answered {response.status_code} without a model; pass --model NAME")
    return models[0]["id"]


async def _send_all(client: httpx.AsyncClient, config: BenchConfig, model: str) -> list[RequestResult]:
    rng = random.Random(config.seed)
    limit = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    url = f"{config.base_url}/v1/completions"
    tasks = []
    for delay in arrival_delays(rng, config.num_requests, config.request_rate):
        await asyncio.sleep(delay)
        payload = _payload(config, model, random_prompt(rng, config.input_len))
        tasks.append(asyncio.create_task(_limited(limit, send_completion(client, url, payload, config.input_len))))
    return list(await asyncio.gather(*tasks))


def arrival_delays(rng: random.Random, num_requests: int, request_rate: float) -> list[float]:
    """Gaps before each request: exponential (a Poisson process), or none at an infinite rate."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    return [0.0] + [rng.expovariate(request_rate) for _ in range(num_requests - 1)]


def _payload(config: BenchConfig, model: str, prompt: str) -> dict:
    payload = {
        "model": model,
        "prompt": prompt,
        "max_tokens": config.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.ignore_eos:
        payload["ignore_eos"] = True
    return payload


async def _limited(limit: asyncio.Semaphore | None, request) -> RequestResult:
    async with limit if limit is not None else contextlib.nullcontext():
        return await request
