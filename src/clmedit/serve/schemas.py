"""The OpenAI API's request and response shapes, as far as `clmedit serve` speaks them.

Requests are validated here, bounds included (`Limits`); fields the API has and we do not
support either have no effect on greedy text (`user`, `seed`, penalties at 0) and are ignored, or
would change what a client gets (`n` > 1, `logprobs`, `echo`, `tools`) and are refused with 400.
Responses are plain dicts in the API's shape (`completion`, `chat_completion`, `error_body`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: its body, its output, its prompt."""

    max_body_bytes: int = 1 << 20  # a request body (JSON) at most this large
    max_tokens: int = 256  # the most new tokens of one answer; chat's default
    max_prompts: int = 16  # prompts in one completion request (a list)
    max_fixes: int = 256  # fixes in one POST /v1/fixes


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # None or 0: greedy (the default)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per prompt")
    logprobs: None = None
    tools: None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("give at most 4 stop strings of 1 to 64 characters")
        return stops

    def new_tokens(self, default: int, limit: int) -> int:
        want = self.max_completion_tokens or self.max_tokens or default
        if want > limit:
            raise ValueError(f"max_tokens {want} is above this server's limit of {limit}")
        return want


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(..., description="a prompt or a list of prompts")
    echo: Literal[False] = False
    best_of: int | None = Field(None, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: str | list[str]) -> list[str]:
        prompts = [v] if isinstance(v, str) else v
        if not prompts or any(not p for p in prompts):
            raise ValueError("give a non-empty prompt (or a list of them)")
        return prompts


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The content as text (a list of parts: its text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in self.content):
            raise ValueError("only text content parts are supported")
        return "".join(p["text"] for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(..., min_length=1)


class FixesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fixes: list[dict[str, Any]] = Field(
        ..., min_length=1, description="each in a form `clmedit apply --fixes` reads"
    )
    task: Literal["cnle", "csne"] = "cnle"


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The API's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _head(kind: str, model: str, rid: str) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def completion(model: str, rid: str, choices: list[dict[str, Any]], use: dict | None) -> dict[str, Any]:
    """A `text_completion` (or, with use None, one streamed chunk of it); choices: text, finish_reason."""
    out = _head("text_completion", model, rid)
    out["choices"] = [
        {
            "index": c.get("index", i),
            "text": c["text"],
            "logprobs": None,
            "finish_reason": c.get("finish_reason"),
        }
        for i, c in enumerate(choices)
    ]
    if use is not None:
        out["usage"] = use
    return out


def chat_completion(model: str, rid: str, text: str, finish: str, use: dict[str, int]) -> dict[str, Any]:
    out = _head("chat.completion", model, rid)
    out["choices"] = [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    ]
    out["usage"] = use
    return out


def chat_chunk(model: str, rid: str, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    out = _head("chat.completion.chunk", model, rid)
    out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return out
