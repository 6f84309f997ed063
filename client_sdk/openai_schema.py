"""The OpenAI API's shapes as the endpoint (client_sdk.openai_api) accepts and answers them.

Requests are strict pydantic models: a field the endpoint cannot honour (tools, logprobs, n > 1, a
penalty) is a 400 naming the parameter, never silently ignored. A few fields OpenAI clients send with
neutral values (`user`, penalties of 0, `logprobs: false`) are accepted. splitmesh's own options ride in
a `splitmesh` object (the official client's `extra_body={"splitmesh": {...}}`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from client_sdk.errors import ClientError

MAX_STOP = 4  # OpenAI's limit on stop sequences


class APIError(ClientError):
    """A request the endpoint answers with an OpenAI-shaped error: {"error": {message, type, code}}."""

    def __init__(
        self, status: int, message: str, code: str, *, type_: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class SplitmeshExtras(BaseModel):
    """Per-request splitmesh options."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float | None = None  # DP budget per token; None = the server's default; "inf" = no noise
    split: int | None = None  # layers run locally; None = the smallest registered split
    max_price_per_token: int | None = Field(default=None, ge=0)  # wei per hop

    @field_validator("epsilon")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError("epsilon must be a positive number or 'inf'")
        return value


class _Request(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    user: str | None = None  # accepted, not used
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    splitmesh: SplitmeshExtras = Field(default_factory=SplitmeshExtras)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported: one job per request")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported (only 0)")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return value

    def stops(self) -> tuple[str, ...]:
        stop = self.stop
        return tuple(s for s in ([stop] if isinstance(stop, str) else stop or []) if s)

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def new_tokens(self) -> int | None:
        return self.max_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None  # accepted, not used

    def as_turn(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Literal[False] = False

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions


def parse(model: type[_Request], body: Any) -> Any:
    """The request, or a 400 naming the first offending parameter."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_request")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            message = f"unsupported parameter: {param}"
            code = "unsupported_parameter"
        else:
            message = f"invalid value for {param}: {err['msg']}"
            code = "invalid_value" if err["type"] != "missing" else "missing_parameter"
        raise APIError(400, message, code, param=param) from None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(rid: str, model: str, text: str, finish: str, use: dict[str, int], extra: Any) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": use,
        "splitmesh": extra,
    }


def text_response(rid: str, model: str, text: str, finish: str, use: dict[str, int], extra: Any) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": use,
        "splitmesh": extra,
    }


def chunk(rid: str, model: str, chat: bool, text: str | None, finish: str | None) -> dict[str, Any]:
    """One streamed chunk; `text` None with chat opens the assistant's turn (role only)."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta if finish is None else {}, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None}
    choice["finish_reason"] = finish
    return {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
