"""Chat backends for the paraphraser and the judge: any OpenAI-compatible endpoint, or a local
transformers model. Both decode greedily (temperature 0) so a build is reproducible.

Spec strings (CLI `--llm` / `--judge`):
  "local" | "local:NAME"   a local model via `clmedit.models.load.load_model` (default smollm2-135m)
  "openai:MODEL"           an OpenAI-compatible chat-completions endpoint via the `openai` package (the
                           `openai` extra); base URL from $CLMEDIT_LLM_BASE_URL or
                           $OPENAI_BASE_URL (default https://api.openai.com/v1), key from
                           $CLMEDIT_LLM_API_KEY or $OPENAI_API_KEY — keys only ever come from the environment.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

from clmedit.errors import ClmeditError

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
_OPENAI_URL = "https://api.openai.com/v1"


class ChatBackend(Protocol):
    name: str

    def chat(self, messages: Messages, max_tokens: int = 96) -> str: ...


class LLMError(RuntimeError):
    """The backend could not answer (network, HTTP error, missing key or package)."""


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint through the `openai` client (the `openai` extra).

    The client retries rate limits, server errors and dropped connections with backoff
    (`retries` attempts in all); every failure that remains becomes an LLMError (callers skip that
    one request). A missing package or key is the user's to fix and stops the build (ClmeditError).
    """

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 60.0, retries: int = 3):
        self.model, self.timeout, self.retries = model, timeout, retries
        self.base_url = (
            base_url
            or os.environ.get("CLMEDIT_LLM_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
            or _OPENAI_URL
        ).rstrip("/")
        self.name = f"openai:{model}"
        self._client = None

    def _connect(self):
        if self._client is None:
            try:
                import openai
            except ImportError as err:
                raise ClmeditError(
                    f"the {self.name} backend needs the openai package: pip install 'clmedit[openai]' "
                    "(or use --llm local)"
                ) from err
            # the key only ever comes from the environment; a local server without auth needs none
            key = os.environ.get("CLMEDIT_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
            if not key and self.base_url == _OPENAI_URL:
                raise ClmeditError(f"{self.name}: no API key; set CLMEDIT_LLM_API_KEY or OPENAI_API_KEY")
            self._client = openai.OpenAI(
                api_key=key or "unused",  # the client insists on one; such servers ignore it
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=max(0, self.retries - 1),
            )
        return self._client

    def chat(self, messages: Messages, max_tokens: int = 96) -> str:
        client = self._connect()
        import openai

        try:
            reply = client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=max_tokens
            )
            return reply.choices[0].message.content or ""
        except openai.APIStatusError as err:
            raise LLMError(f"{self.base_url}: HTTP {err.status_code} {err.message}") from err
        except (openai.OpenAIError, IndexError, AttributeError) as err:
            raise LLMError(f"{self.base_url}: {type(err).__name__}: {err}") from err


class LocalChat:
    """A local causal LM with a chat template, greedy decoding. Loaded on first use."""

    def __init__(self, model_name: str = "smollm2-135m"):
        self.model_name, self.name = model_name, f"local:{model_name}"
        self._model = self._tok = None

    def chat(self, messages: Messages, max_tokens: int = 96) -> str:
        import torch

        from clmedit.models.text import pad_token_id

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
                pad_token_id=pad_token_id(tok, default=None),
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
