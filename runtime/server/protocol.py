"""OpenAI API request models (validated strictly) and response bodies, as plain dicts."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from infire.errors import InvalidRequestError


class UnsupportedParameterError(InvalidRequestError):
    """A known OpenAI parameter infire does not implement, set to a non-default value."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions; None means the default."""

    model_config = ConfigDict(strict=True)

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(default=None, description="infire extension; 0 or -1 disables")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = Field(default=False, description="infire extension: generate max_tokens tokens")

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise UnsupportedParameterError("n", f"n={self.n} is not supported: infire returns one choice per request (n=1)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0.0):
                raise UnsupportedParameterError(name, f"{name} is not supported; leave it unset or 0")
        if self.logit_bias:
            raise UnsupportedParameterError("logit_bias", "logit_bias is not supported; leave it unset")


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # the OpenAI default for completions
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request; lists of prompts are a batch, which is not supported."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise UnsupportedParameterError("prompt", f"a batch of {len(prompt)} prompts is not supported; send one prompt per request")
            prompt = prompt[0]
        return prompt

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise UnsupportedParameterError("echo", "echo is not supported")
        if self.logprobs is not None:
            raise UnsupportedParameterError("logprobs", "logprobs are not supported")
        if self.best_of not in (None, 1):
            raise UnsupportedParameterError("best_of", "best_of > 1 is not supported")
        if self.suffix:
            raise UnsupportedParameterError("suffix", "suffix is not supported")


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it: role and plain-text content."""
        content = self.content
        if isinstance(content, list):
            if any(part.type != "text" for part in content):
                raise UnsupportedParameterError("messages", "only text content parts are supported")
            content = "".join(part.text or "" for part in content)
        return {"role": self.role, "content": content or ""}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True  # infire extension, as in vLLM

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.to_template() for m in self.messages]

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise UnsupportedParameterError("logprobs", "logprobs are not supported")
        if self.tools:
            raise UnsupportedParameterError("tools", "tool calling is not supported")


def usage(num_prompt_tokens: int, num_output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_output_tokens,
        "total_tokens": num_prompt_tokens + num_output_tokens,
    }


def completion_body(request_id: str, model: str, created: int, choices: list[dict], usage_: dict | None) -> dict:
    return {"id": request_id, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": usage_}


def completion_choice(text: str, finish_reason: str | None) -> dict:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_body(request_id: str, model: str, created: int, text: str, finish_reason: str | None, usage_: dict) -> dict:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model, "choices": [choice], "usage": usage_}


def chat_chunk(request_id: str, model: str, created: int, delta: dict | None, finish_reason: str | None = None, usage_: dict | None = None) -> dict:
    """A chat stream chunk; delta=None makes the usage-only chunk, which has no choices."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices, "usage": usage_}


def model_list(model: str, created: int, max_model_len: int) -> dict:
    card = {"id": model, "object": "model", "created": created, "owned_by": "infire", "max_model_len": max_model_len}
    return {"object": "list", "data": [card]}


def now() -> int:
    return int(time.time())


