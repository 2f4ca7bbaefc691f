"""The OpenAI wire format: request bodies (validated strictly: "5" is not a number) and response objects.

Fields the OpenAI API has and this server cannot honour (n > 1, logprobs, tools, echo, suffix) are refused with
a 400 that names the field, rather than silently ignored; fields that only tune behaviour we do not have
(presence/frequency penalties, user, metadata) are accepted and ignored, so ordinary clients work unchanged.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 4  # as OpenAI


class ApiError(Exception):
    """Becomes {"error": {"message", "type", "param", "code"}} with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Strict(BaseModel):
    # strict: a JSON string is not coerced into a number or a bool; extra fields are ignored like OpenAI does
    # for fields it does not know in a given model version.
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def plain(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # "developer" is the newer OpenAI name for the system role.
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 is greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, not applied
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, not applied
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise ApiError(400, f"'stop' holds {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed", "stop")
        return tuple(s for s in stop if s)

    def check_unsupported(self) -> None:
        if self.n != 1:
            raise ApiError(400, "only n=1 is supported: send the request several times for several answers", "n")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for max_tokens
    logprobs: bool | None = None
    tools: list | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.logprobs:
            raise ApiError(400, "logprobs are not supported by this server", "logprobs")
        if self.tools:
            raise ApiError(400, "tool calls are not supported by this server", "tools")

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        for name in ("echo", "suffix", "logprobs"):
            if getattr(self, name):
                raise ApiError(400, f"'{name}' is not supported by this server", name)
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ApiError(400, "send one prompt per request (a list of exactly one string)", "prompt")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(done: dict) -> dict:
    return {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"],
            "total_tokens": done["prompt_tokens"] + done["completion_tokens"]}


def chat_response(rid: str, model: str, done: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done["text"]},
                         "logprobs": None, "finish_reason": done["finish_reason"]}],
            "usage": usage(done), "system_fingerprint": None}


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def completion_response(rid: str, model: str, done: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": done["text"], "logprobs": None,
                         "finish_reason": done["finish_reason"]}], "usage": usage(done)}


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(rid: str, model: str, obj: str, done: dict) -> dict:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(done)}


class ClassifyRequest(_Strict):
    """POST /v1/classify: {"model": ..., "input": "a text" | ["text", ...]} (OpenAI's embeddings shape)."""

    model: str
    input: str | list[str]

    def texts(self, limit: int) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise ApiError(400, "'input' is empty: send a text or a list of texts", "input")
        if len(texts) > limit:
            raise ApiError(400, f"'input' has {len(texts)} texts; this server takes at most {limit} a request",
                           "input")
        if any(not t.strip() for t in texts):
            raise ApiError(400, "'input' holds an empty text", "input")
        return texts
