"""`infire serve` as a user runs it: the demo model (SmolLM2-135M-Instruct) answers through
the official OpenAI client, and SIGTERM mid-stream shuts the server down cleanly."""

from __future__ import annotations

import signal
import time

import openai

from tests.infire.frontend_fixtures import ServerProcess


def test_demo_model_answers_then_sigterm_ends_streams_and_exits_0(smollm2_dir) -> None:
    with ServerProcess(smollm2_dir, "--served-model-name", "smol", "--num-kv-blocks", "64") as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = client.chat.completions.create(model="smol", messages=question, temperature=0, max_tokens=24)
        assert "Paris" in answer.choices[0].message.content

        stream = client.completions.create(
            model="smol", prompt="One, two, three,", max_tokens=600, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        next(chunks)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        rest = list(chunks)
        assert rest and rest[-1].choices[0].finish_reason == "abort"
        assert server.process.wait(timeout=20) == 0
        assert time.monotonic() - signalled < 10
        _, stderr = server.process.communicate()
        assert "Traceback" not in stderr
