"""The OpenAI request bodies as pydantic models, and reading one from a hostile client.

Types are strict, as OpenAI's server is: `max_tokens` "10", true or 3.0 is a 400, not a silent 10/1/3.
Unknown fields are ignored (and listed in a log line and the `X-Ignored-Fields` header), as OpenAI's server
ignores them: that is how vLLM's other extensions (`skip_special_tokens`, `guided_json`, ...) pass; those
the engine honours (`min_tokens`, `stop_token_ids`, `ignore_eos`, `include_stop_str_in_output`, ...) are
declared here.
`read_json` bounds the body (413 from Content-Length before reading, or as soon as the bytes pass the limit)
and its read time, and refuses text that is not valid UTF-8 (lone surrogates included) with a 400.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.errors import ApiError
from serve.timeouts import within

log = logging.getLogger("yoda.serve")
DEFAULT_MAX_BODY_BYTES = 4 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage in every chunk


class SamplingRequest(_Strict):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)  # -1 or 0: off (vLLM uses -1, others 0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool = False  # vLLM: `token_ids` on every choice, `prompt_token_ids` on the first
    user: str | None = None

    @property
    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenizeRequest(_Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int]


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def parse(model: type[BaseModel], body: Any) -> BaseModel:
    """A validated request (ApiError 400 otherwise); unknown fields are logged and kept in `model_extra`."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        request = model.model_validate(body)
    except ValidationError as e:
        raise ApiError(400, validation_message(e)) from None
    ignored = ignored_fields(request)
    if ignored:
        log.info("ignored request fields: %s", ", ".join(ignored))
    return request


def ignored_fields(request: BaseModel) -> list[str]:
    """Fields this server does not act on: unknown ones and vLLM's accepted-but-ignored extensions."""
    return sorted(request.model_extra or {})


def _check_text(value: Any, path: str = "") -> None:
    """400 for strings that are not valid Unicode text (a lone surrogate such as "\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"{path or 'body'}: text holds an unpaired surrogate (not valid Unicode)",
                           path or None) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, path)
            _check_text(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{path}.{i}" if path else str(i))


async def read_json(http, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, timeout_s: float | None = 30.0) -> Any:
    """The request's JSON body. 413 past `max_body_bytes` (declared or streamed), 408 when the client takes
    longer than `timeout_s` to send it, 400 for bytes that are not UTF-8 JSON or text that is not Unicode."""
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise ApiError(413, f"request body of {int(declared)} bytes exceeds the limit of {max_body_bytes} bytes")

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in http.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ApiError(413, f"request body exceeds the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await within(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s:g} s") from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not valid UTF-8: {e.reason} at byte {e.start}") from None
    except ValueError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    _check_text(body)
    return body


async def until_disconnected(http) -> None:
    """Returns when the client disconnects. Call after the body is read: the next ASGI message is then the
    disconnect. NOTE: polling Starlette's `is_disconnected()` missed some disconnects; waiting does not."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
