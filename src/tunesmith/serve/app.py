"""The OpenAI-compatible HTTP API over one served model and its batching engine.

Every client mistake is a 4xx in OpenAI's error shape ({"error": {"message", "type", "param", "code"}}) and the
server stays up; a 5xx means a bug or a failed generation step. The event loop only validates, tokenizes and
relays: generation runs on the engine's worker thread, which hands events back with call_soon_threadsafe.
FastAPI is imported at module level (it resolves the handlers' annotations there); only `tunesmith serve`
imports this module.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from tunesmith.serve.engine import Engine, EngineBusy, GenerationRequest
from tunesmith.serve.guard import Guard
from tunesmith.serve.loading import Served, render_chat, render_completion
from tunesmith.serve.protocol import (ApiError, ChatRequest, ClassifyRequest, CompletionRequest, chat_chunk,
                                      chat_response,
                                      completion_chunk, completion_response, error_body, new_id, usage_chunk)

MAX_CLASSIFY_INPUTS = 256  # texts per /v1/classify request
DISCONNECT_POLL_S = 1.0  # how often a waiting non-streaming request checks that its client is still there


@dataclass
class Limits:
    max_tokens: int = 512  # cap on a request's max_tokens; also the default when a chat request sets none
    max_prompt_tokens: int = 2048  # longer prompts get 400 context_length_exceeded
    max_body_bytes: int = 1_000_000  # larger bodies get 413


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(served: Served, engine: Engine | None, limits: Limits, api_key: str | None = None):
    """engine: the generation engine; None for a classifier, which answers POST /v1/classify instead."""
    app = FastAPI(title="tunesmith serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"the request body is not valid JSON: {first.get('msg')}",
                                           code="invalid_json"), status_code=400)
        where = ".".join(loc) or "body"
        return JSONResponse(error_body(f"'{where}': {first.get('msg')}", param=where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(_request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

    def check_model(name: str) -> None:
        if name != served.model_id:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{served.model_id}'",
                           "model", "model_not_found")

    def check_generates() -> None:
        if engine is None:
            raise ApiError(400, f"'{served.model_id}' is a {served.model.task} model: it does not generate text; "
                           "use POST /v1/classify", "model", "wrong_endpoint")

    def submit(body, ids: list[int], prompt_param: str) -> tuple[GenerationRequest, asyncio.Queue]:
        requested, name = body.requested_max_tokens()
        if requested is not None and requested > limits.max_tokens:
            raise ApiError(400, f"'{name}' is {requested}; this server allows at most {limits.max_tokens}", name)
        if not ids:
            raise ApiError(400, "the prompt is empty", prompt_param)
        room = served.max_context - len(ids)
        if len(ids) > limits.max_prompt_tokens or room < 1:
            allowed = min(limits.max_prompt_tokens, served.max_context - 1)
            raise ApiError(400, f"the prompt is {len(ids)} tokens; this server accepts at most {allowed}",
                           prompt_param, "context_length_exceeded")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: dict) -> None:  # runs on the engine's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed (shutdown): nobody is listening any more
                pass

        request = GenerationRequest(ids, min(requested or limits.max_tokens, room), emit, body.temperature,
                                    body.top_p, body.stop_strings(), body.seed)
        try:
            engine.submit(request)
        except EngineBusy as exc:
            raise ApiError(429, f"the server is busy ({exc}); retry shortly", code="server_busy",
                           type_="rate_limit_error") from None
        return request, events

    async def wait_done(request: GenerationRequest, events: asyncio.Queue, http: Request) -> dict | None:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    request.cancelled = True
                    return None
                continue
            if event["type"] == "done":
                return event
            if event["type"] == "error":
                raise ApiError(500, f"generation failed: {event['message']}", type_="server_error")

    async def stream(request: GenerationRequest, events: asyncio.Queue, rid: str, first: str | None, chunk,
                     obj: str, include_usage: bool):
        try:
            if first is not None:
                yield first
            while True:
                event = await events.get()
                if event["type"] == "delta":
                    yield _sse(chunk(event["text"], None))
                    continue
                if event["type"] == "done":
                    yield _sse(chunk(None, event["finish_reason"]))
                    if include_usage:
                        yield _sse(usage_chunk(rid, served.model_id, obj, event))
                else:
                    yield _sse(error_body(f"generation failed: {event['message']}", "server_error"))
                break
            yield "data: [DONE]\n\n"
        finally:
            request.cancelled = True  # a client that hung up frees its row at the next step

    @app.get("/health")
    async def health():
        body = {"status": "ok", "model": served.model_id, "kind": served.kind, "max_context": served.max_context,
                "limits": asdict(limits)}
        if engine is not None:
            body.update(max_batch_size=engine.max_batch_size, batching=engine.stats_json())
        return body

    def model_card() -> dict:
        return {"id": served.model_id, "object": "model", "created": created, "owned_by": "tunesmith"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request):
        check_model(body.model)
        check_generates()
        body.check_unsupported()
        try:
            ids = render_chat(served, [m.plain() for m in body.messages])
        except Exception as exc:  # jinja TemplateError: e.g. a template that insists on alternating roles
            raise ApiError(400, f"the model's chat template cannot render these messages: {exc}",
                           "messages") from None
        request, events = submit(body, ids, "messages")
        rid = new_id("chatcmpl")
        if body.stream:
            def chunk(text, finish):
                return chat_chunk(rid, served.model_id, {} if text is None else {"content": text}, finish)
            first = _sse(chat_chunk(rid, served.model_id, {"role": "assistant", "content": ""}))
            return StreamingResponse(stream(request, events, rid, first, chunk, "chat.completion.chunk",
                                            body.include_usage), media_type="text/event-stream")
        done = await wait_done(request, events, http)
        return Response(status_code=499) if done is None else chat_response(rid, served.model_id, done)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        check_model(body.model)
        check_generates()
        body.check_unsupported()
        request, events = submit(body, render_completion(served, body.prompt_text()), "prompt")
        rid = new_id("cmpl")
        if body.stream:
            def chunk(text, finish):
                return completion_chunk(rid, served.model_id, text or "", finish)
            return StreamingResponse(stream(request, events, rid, None, chunk, "text_completion",
                                            body.include_usage),
                                     media_type="text/event-stream")
        done = await wait_done(request, events, http)
        return Response(status_code=499) if done is None else completion_response(rid, served.model_id, done)

    classify_lock = asyncio.Lock()  # one forward pass at a time; a request's list of texts is one batch

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        check_model(body.model)
        if served.kind != "classify":
            raise ApiError(400, f"'{served.model_id}' generates text; use /v1/chat/completions", "model",
                           "wrong_endpoint")
        texts = body.texts(MAX_CLASSIFY_INPUTS)
        async with classify_lock:
            outputs = await asyncio.to_thread(served.model.predict, texts)
        return {"object": "list", "model": served.model_id, "task": served.model.task,
                "data": [{"index": i, **out} for i, out in enumerate(outputs)]}

    return Guard(app, api_key, limits.max_body_bytes)
