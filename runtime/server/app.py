"""The FastAPI app: OpenAI-compatible completions and chat completions, models, health, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from infire.errors import InfireError
from infire.frontend import Frontend, GenerationChunk, RequestStream, random_request_id
from infire.server import protocol
from infire.server.errors import InvalidBodyError, ModelNotFoundError, error_response, exception_body, install_error_handlers
from infire.server.metrics import CONTENT_TYPE, ServerMetrics
from infire.server.sampling import to_sampling_params

logger = logging.getLogger(__name__)
BodyModel = TypeVar("BodyModel", bound=BaseModel)

# nginx's status for "client closed the request"; nobody reads it, it only shows in logs.
CLIENT_CLOSED_REQUEST = 499


def build_app(frontend: Frontend, model_name: str, metrics: ServerMetrics) -> FastAPI:
    """An app serving a started frontend; stopping the app shuts the frontend down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        frontend.shutdown()

    app = FastAPI(title="infire", lifespan=lifespan)
    install_error_handlers(app)
    serving = OpenAIServing(frontend, model_name)

    @app.get("/health")
    async def health() -> Response:
        if not frontend.is_alive:
            return error_response(503, "the engine is not running", "service_unavailable", code="engine_dead")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        return protocol.model_list(model_name, serving.created, frontend.max_model_len)

    # Bodies are parsed here rather than by FastAPI so that any content type holding JSON
    # works (curl -d sends form-encoded) and every error is an OpenAI-style 400.
    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serving.completion(await parse_body(request, protocol.CompletionRequest), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serving.chat(await parse_body(request, protocol.ChatCompletionRequest), request)

    return app


class OpenAIServing:
    """Turns validated API requests into frontend requests and results into API bodies."""

    def __init__(self, frontend: Frontend, model_name: str):
        self.frontend = frontend
        self.model_name = model_name
        self.created = protocol.now()

    async def completion(self, body: protocol.CompletionRequest, request: Request) -> Response:
        self._check_request(body)
        prompt_ids = self.frontend.encode_prompt(body.single_prompt())
        stream = await self._submit(body, prompt_ids, body.max_tokens, "cmpl")

        def complete(text, last, usage) -> dict:
            choice = protocol.completion_choice(text, last.finish_reason)
            return protocol.completion_body(stream.request_id, self.model_name, protocol.now(), [choice], usage)

        return await self._respond(body, request, stream, self._completion_events, complete)

    async def chat(self, body: protocol.ChatCompletionRequest, request: Request) -> Response:
        self._check_request(body)
        prompt_ids = self.frontend.encode_chat(body.template_messages(), body.add_generation_prompt)
        stream = await self._submit(body, prompt_ids, body.requested_max_tokens(), "chatcmpl")

        def complete(text, last, usage) -> dict:
            return protocol.chat_body(stream.request_id, self.model_name, protocol.now(), text, last.finish_reason, usage)

        return await self._respond(body, request, stream, self._chat_events, complete)

    async def _respond(self, body, request: Request, stream, events, complete) -> Response:
        """SSE events when streaming; else wait for the whole output and build the body with `complete`."""
        if body.stream:
            return sse_response(events(stream, body.include_usage), lambda: self.frontend.abort(stream.request_id))
        result = await collect(stream, request, self.frontend)
        if result is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        text, last = result
        usage = protocol.usage(last.num_prompt_tokens, last.num_output_tokens)
        return JSONResponse(complete(text, last, usage))

    def _check_request(self, body: protocol.SamplingFields) -> None:
        if body.model is not None and body.model != self.model_name:
            raise ModelNotFoundError(f"the model '{body.model}' does not exist here; this server serves '{self.model_name}'")
        body.check_supported()

    async def _submit(self, body: protocol.SamplingFields, prompt_ids: list[int], max_tokens: int | None, prefix: str) -> RequestStream:
        if max_tokens is None:
            max_tokens = self.frontend.default_max_tokens(len(prompt_ids))
        params = to_sampling_params(body, max_tokens, self.frontend.tokenizer.eos_token_id)
        return await self.frontend.submit(prompt_ids, params, body.stop_strings(), random_request_id(prefix))

    async def _completion_events(self, stream: RequestStream, include_usage: bool) -> AsyncIterator[str]:
        created, last = protocol.now(), None
        extra = {"usage": None} if include_usage else {}
        async for chunk in stream:
            last = chunk
            if chunk.text or chunk.finished:
                choice = protocol.completion_choice(chunk.text, chunk.finish_reason)
                yield sse({**protocol.completion_body(stream.request_id, self.model_name, created, [choice], None), **extra})
        if include_usage and last is not None:
            usage = protocol.usage(last.num_prompt_tokens, last.num_output_tokens)
            yield sse(protocol.completion_body(stream.request_id, self.model_name, created, [], usage))

    async def _chat_events(self, stream: RequestStream, include_usage: bool) -> AsyncIterator[str]:
        created, last = protocol.now(), None

        def chunk_event(delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> str:
            body = protocol.chat_chunk(stream.request_id, self.model_name, created, delta, finish_reason, usage)
            if not include_usage:
                del body["usage"]
            return sse(body)

        yield chunk_event({"role": "assistant", "content": ""})
        async for chunk in stream:
            last = chunk
            if chunk.text:
                yield chunk_event({"content": chunk.text})
            if chunk.finished:
                yield chunk_event({}, chunk.finish_reason)
        if include_usage and last is not None:
            yield chunk_event(None, usage=protocol.usage(last.num_prompt_tokens, last.num_output_tokens))


async def parse_body(request: Request, model: type[BodyModel]) -> BodyModel:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidBodyError(f"the request body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBodyError.from_validation(exc, model) from exc


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class SSEResponse(StreamingResponse):
    """A server-sent-events stream that runs on_close however it ends (done, error, client gone)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse_response(events: AsyncIterator[str], on_close: Callable[[], None]) -> SSEResponse:
    return SSEResponse(_with_error_and_done(events), on_close)


async def _with_error_and_done(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Headers are sent already: an error mid-stream becomes an error event, then [DONE]."""
    try:
        async for event in events:
            yield event
    except InfireError as exc:
        yield sse(exception_body(exc)[1])
    yield "data: [DONE]\n\n"


async def collect(stream: RequestStream, request: Request, frontend: Frontend) -> tuple[str, GenerationChunk] | None:
    """All text of a non-streaming request; None (request aborted) if the client went away."""
    parts: list[str] = []
    chunks = aiter(stream)
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    pending = asyncio.ensure_future(anext(chunks))
    try:
        while True:
            await asyncio.wait({pending, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                return None
            chunk = pending.result()
            parts.append(chunk.text)
            if chunk.finished:
                return "".join(parts), chunk
            pending = asyncio.ensure_future(anext(chunks))
    finally:
        pending.cancel()
        disconnected.cancel()
        frontend.abort(stream.request_id)


async def _wait_for_disconnect(request: Request) -> None:
    """The body is read already, so the next ASGI message is the client going away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
