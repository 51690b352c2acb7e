"""Chat backends for the paraphraser and the judge: any OpenAI-compatible endpoint, or a local
transformers model. Both decode greedily (temperature 0) so a build is reproducible.

Spec strings (CLI `--llm` / `--judge`):
  "local" | "local:NAME"   a local model via `clmedit.models.load.load_model` (default smollm2-135m)
  "openai:MODEL"           POST {base}/chat/completions; base URL from $CLMEDIT_LLM_BASE_URL or
                           $OPENAI_BASE_URL (default https://api.openai.com/v1), key from
                           $CLMEDIT_LLM_API_KEY or $OPENAI_API_KEY — keys only ever come from the environment.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Protocol

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class ChatBackend(Protocol):
    name: str

    def chat(self, messages: Messages, max_tokens: int = 96) -> str: ...


class LLMError(RuntimeError):
    """The backend could not answer (network, HTTP error, missing key)."""


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint over plain urllib (no extra dependency)."""

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 60.0, retries: int = 3):
        self.model, self.timeout, self.retries = model, timeout, retries
        self.base_url = (
            base_url
            or os.environ.get("CLMEDIT_LLM_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
            or "https://api.openai.com/v1"
        ).rstrip("/")
        self.name = f"openai:{model}"

    def chat(self, messages: Messages, max_tokens: int = 96) -> str:
        key = os.environ.get("CLMEDIT_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as err:
                if err.code not in (429, 500, 502, 503) or attempt == self.retries - 1:
                    raise LLMError(f"{self.base_url}: HTTP {err.code} {err.reason}") from err
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as err:
                if attempt == self.retries - 1:
                    raise LLMError(f"{self.base_url}: {type(err).__name__}: {err}") from err
            time.sleep(2**attempt)  # back off on rate limits and transient failures
        raise LLMError(f"{self.base_url}: no answer")


class LocalChat:
    """A local causal LM with a chat template, greedy decoding. Loaded on first use."""

    def __init__(self, model_name: str = "smollm2-135m"):
        self.model_name, self.name = model_name, f"local:{model_name}"
        self._model = self._tok = None

    def chat(self, messages: Messages, max_tokens: int = 96) -> str:
        import torch

        if self._model is None:
            from clmedit.models.load import load_model  # lazy: data must stay importable without torch work

            self._model, self._tok = load_model(self.model_name)
        tok, model = self._tok, self._model
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n".join(m["content"] for m in messages) + "\n"
        ids = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def make_backend(spec: str) -> ChatBackend:
    """A backend from its spec string (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "local":
        return LocalChat(arg or "smollm2-135m")
    if kind == "openai" and arg:
        return OpenAIChat(arg)
    raise ValueError(f"unknown LLM backend {spec!r}; use 'local', 'local:MODEL' or 'openai:MODEL'")
