"""Chat messages as one prompt: the model's own chat template, or a plain one when it has none."""

from __future__ import annotations

from typing import Any


def chat_prompt(tok: Any, messages: list[tuple[str, str]]) -> str:
    """The text the model continues to answer `messages` ((role, content) pairs) as the assistant.

    With a chat template (instruct models): the template, with the assistant's turn opened. A
    tokenizer without one (base models) gets "role: content" lines and an open "assistant:" line.
    """
    if getattr(tok, "chat_template", None):
        turns = [{"role": role, "content": content} for role, content in messages]
        return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"
