"""One benchmark request: a streaming completion, timed chunk by chunk."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import httpx

# Plain words that most tokenizers keep whole, so a prompt of N words is about N tokens.
WORDS = tuple(
    """the of and to in is was he for it with as his on be at by had are but from or have an they
    which one you were all we her she there would their will when who him been has more if no out do
    so can what up said about other into than its time only could new them man some these then two
    first may any like now my such make over our even most me state after also made many did must
    before back see through way where get much go well your know should down work year because come
    people just say each those take day good how long little use own very world still last might
    great old same year right house water under light hand place part small number again""".split()
)


@dataclass
class RequestResult:
    """Timings (seconds, from the request's own start) and token counts of one request."""

    ok: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None  # None: the stream carried no text
    latency: float = 0.0
    itls: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def random_prompt(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


async def send_completion(client: httpx.AsyncClient, url: str, payload: dict, prompt_words: int) -> RequestResult:
    """POST a streaming completion; failures are recorded in the result, never raised."""
    result = RequestResult(prompt_tokens=prompt_words)
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {body[:300]}"
                return result
            await _read_events(response, result, start)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.latency = time.perf_counter() - start
    result.ok = not result.error
    return result


async def _read_events(response: httpx.Response, result: RequestResult, start: float) -> None:
    last = start
    num_text_chunks, usage = 0, None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            result.error = str(event["error"].get("message", event["error"]))
            return
        usage = event.get("usage") or usage
        if any(choice.get("text") for choice in event.get("choices", [])):
            now = time.perf_counter()
            if num_text_chunks == 0:
                result.ttft = now - start
            else:
                result.itls.append(now - last)
            last, num_text_chunks = now, num_text_chunks + 1
    if usage:
        result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
    result.output_tokens = usage.get("completion_tokens", num_text_chunks) if usage else num_text_chunks
