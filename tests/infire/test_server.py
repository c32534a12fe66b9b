"""The OpenAI-compatible server over HTTP (real uvicorn on a loopback port, tiny random
Llama): every endpoint, streaming, usage, stop strings, bad input, disconnects, load."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest

from tests.infire.frontend_fixtures import ThreadServer, tiny_model_dir

MODEL = "tiny"
PROMPT = "Once upon a time there was"
MAX_MODEL_LEN = 96
LONG_MAX_MODEL_LEN = 2048


@pytest.fixture(scope="module")
def server():
    # 6 blocks of 16 tokens: one full-length request fits, or three of 32 tokens.
    with ThreadServer(tiny_model_dir(), MODEL, num_kv_blocks=6, max_model_len=MAX_MODEL_LEN) as server:
        yield server


@pytest.fixture(scope="module")
def long_server():
    """Room for long requests, so a client can leave while its request is surely running."""
    with ThreadServer(tiny_model_dir(), MODEL, num_kv_blocks=128, max_model_len=LONG_MAX_MODEL_LEN) as server:
        yield server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def metric(server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    label_re = "".join(f'(?=[^}}]*{k}="{v}")' for k, v in labels.items())
    match = re.search(rf"^infire_{name}\{{{label_re}[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_idle(server, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(server, "num_kv_blocks_used") or metric(server, "num_requests_running"):
        assert time.monotonic() < deadline, "KV blocks were not freed"
        time.sleep(0.05)


def sse_events(lines) -> list:
    events = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_health_and_models(server, client) -> None:
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_completion(client) -> None:
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=3, extra_body={"ignore_eos": True})
    assert result.object == "text_completion" and result.id.startswith("cmpl-")
    assert result.choices[0].finish_reason == "length" and isinstance(result.choices[0].text, str)
    usage = result.usage
    assert (usage.completion_tokens, usage.total_tokens) == (8, usage.prompt_tokens + 8) and usage.prompt_tokens > 0


def test_streaming_completion_equals_non_streaming(client) -> None:
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=5)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_prompt_as_token_ids(client) -> None:
    result = client.completions.create(model=MODEL, prompt=[5, 6, 7], max_tokens=2, extra_body={"ignore_eos": True})
    assert result.usage.prompt_tokens == 3 and result.usage.completion_tokens == 2


def test_chat_completion(client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"}]
    result = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=5, seed=1, extra_body={"ignore_eos": True})
    assert result.object == "chat.completion" and result.choices[0].message.role == "assistant"
    assert result.choices[0].finish_reason == "length" and result.usage.completion_tokens == 5
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, seed=1, stream=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == result.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage is None


def test_stop_strings(client) -> None:
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=1.0, seed=11, extra_body={"ignore_eos": True})
    full = client.completions.create(**args).choices[0].text
    start = next(i for i in range(len(full) // 3, len(full)) if "\ufffd" not in full[i : i + 2])
    stop = full[start : start + 2]
    for stop_arg in (stop, ["never-there", stop]):
        result = client.completions.create(**args, stop=stop_arg)
        assert result.choices[0].text == full[: full.index(stop)] and result.choices[0].finish_reason == "stop"
        streamed = list(client.completions.create(**args, stop=stop_arg, stream=True))
        assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


BAD_REQUESTS = [
    # (path, raw body, status, param, code)
    ("/v1/completions", b'{"prompt": "hi", ', 400, None, None),
    ("/v1/completions", b"[]", 400, None, None),
    ("/v1/completions", b'{"max_tokens": 4}', 400, "prompt", None),
    ("/v1/completions", b'{"prompt": 5}', 400, "prompt", None),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": "four"}', 400, "max_tokens", None),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 0}', 400, "max_tokens", None),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": -3}', 400, "max_tokens", None),
    ("/v1/completions", b'{"prompt": "hi", "temperature": -1}', 400, None, None),
    ("/v1/completions", b'{"prompt": "hi", "top_p": 0}', 400, None, None),
    ("/v1/completions", b'{"prompt": "hi", "n": 2}', 400, "n", None),
    ("/v1/completions", b'{"prompt": "hi", "model": "gpt-4"}', 404, "model", "model_not_found"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 200}', 400, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", json.dumps({"prompt": [7] * 120, "max_tokens": 1}).encode(), 400, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", b'{"prompt": [1, 100000]}', 400, "prompt", None),
    ("/v1/chat/completions", b'{"model": "tiny"}', 400, "messages", None),
    ("/v1/chat/completions", b'{"messages": "hi"}', 400, "messages", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "x"}]}', 400, "messages", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 3, "stream": true}', 400, "n", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}', 400, "max_tokens", None),
]


@pytest.mark.parametrize("path, body, status, param, code", BAD_REQUESTS)
def test_bad_requests_get_openai_errors(server, path, body, status, param, code) -> None:
    response = httpx.post(f"{server.base_url}{path}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)


def test_openai_client_sees_typed_errors(client) -> None:
    with pytest.raises(openai.NotFoundError, match="'nope' does not exist") as error:
        client.completions.create(model="nope", prompt="hi", max_tokens=1)
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2)


def test_unknown_route_is_a_json_404(server) -> None:
    response = httpx.get(f"{server.base_url}/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"


def test_server_still_serves_after_bad_requests(server, client) -> None:
    for path, body, *_ in BAD_REQUESTS:
        httpx.post(f"{server.base_url}{path}", content=body)
    assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.prompt_tokens > 0
    wait_idle(server)


def test_client_disconnect_mid_stream_frees_kv_blocks(long_server) -> None:
    server = long_server
    aborted_before = metric(server, "request_success_total", finish_reason="abort")
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": LONG_MAX_MODEL_LEN - 100, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert metric(server, "num_kv_blocks_used") > 0 and metric(server, "num_requests_running") == 1
    wait_idle(server)
    assert metric(server, "request_success_total", finish_reason="abort") == aborted_before + 1


def test_client_timeout_on_non_streaming_request_frees_kv_blocks(long_server) -> None:
    server = long_server
    aborted_before = metric(server, "request_success_total", finish_reason="abort")
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": LONG_MAX_MODEL_LEN - 100, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=httpx.Timeout(5.0, read=0.2))
    wait_idle(server)
    assert metric(server, "request_success_total", finish_reason="abort") == aborted_before + 1


def test_more_concurrent_requests_than_kv_capacity_all_complete(server) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 25, "ignore_eos": True, "stream": True}

    async def one(client: httpx.AsyncClient) -> list:
        async with client.stream("POST", f"{server.base_url}/v1/completions", json=body) as response:
            assert response.status_code == 200
            return sse_events([line async for line in response.aiter_lines()])

    async def many() -> list:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client) for _ in range(5)))

    for events in asyncio.run(many()):
        assert events[-1]["choices"][0]["finish_reason"] == "length"
    wait_idle(server)


def test_metrics_expose_latencies_tokens_and_load(server, client) -> None:
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"ignore_eos": True})
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in (
        "time_to_first_token_seconds_count", "time_per_output_token_seconds_count", "inter_token_latency_seconds_count",
        "e2e_request_latency_seconds_count", "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
        "prompt_tokens_total", "generation_tokens_total", "request_success_total",
    ):
        assert f"infire_{name}{{" in text, name
    assert metric(server, "generation_tokens_total") >= 4 and metric(server, "e2e_request_latency_seconds_count") >= 1
    assert metric(server, "request_success_total", finish_reason="length") >= 1


def test_stopped_engine_answers_503() -> None:
    with ThreadServer(tiny_model_dir(), MODEL, num_kv_blocks=4) as server:
        server.frontend.shutdown()
        assert httpx.get(f"{server.base_url}/health").status_code == 503
        response = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert response.status_code == 503 and "shut down" in response.json()["error"]["message"]
