"""Tokenization shared by editors and evaluation, so both see the exact same token sequences.

The study's training sequence is `prompt + " " + target` with the loss on target tokens only.
We build it as prompt ids followed by the ids of `" " + target`, so the target's tokens are
exactly what greedy decoding after the prompt must produce, and `len(target_ids)` is the
`max_new_tokens` of the effectiveness check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

IGNORE = -100  # label value the loss skips


def prompt_ids(tok, prompt: str) -> list[int]:
    return tok(prompt, add_special_tokens=True)["input_ids"]


def target_ids(tok, target: str) -> list[int]:
    """Token ids of the target as it follows the prompt (with its leading space)."""
    return tok(" " + target, add_special_tokens=False)["input_ids"]


def model_name(model: nn.Module) -> str:
    """The key under which neighbour answers of this model are cached in a dataset."""
    cfg = model.config
    return getattr(cfg, "clmedit_name", None) or getattr(cfg, "name_or_path", None) or cfg.model_type


def pad_token_id(tok, default: int | None = 0) -> int | None:
    """The id that fills padding: the tokenizer's pad token, else its eos, else `default`.

    Padded positions are masked out, so any id works; one rule keeps every batch identical.
    """
    for tid in (tok.pad_token_id, tok.eos_token_id):
        if tid is not None:
            return tid
    return default


def right_pad(
    rows: Sequence[Sequence[int] | torch.Tensor], value: float, width: int | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.long,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Stack rows of different lengths (each (T_i, ...)) into (B, T, ...) padded at the right with `value`.

    Returns (padded, mask): mask (B, T) long is 1 on each row's own positions. T is the longest row,
    or `width` when that is larger. Right padding keeps a row's real positions exactly what they
    would be alone (causal attention), so anything read there does not depend on the batch.
    """
    tensors = [r if isinstance(r, torch.Tensor) else torch.tensor(list(r), dtype=dtype) for r in rows]
    padded = pad_sequence(tensors, batch_first=True, padding_value=value)
    if width is not None and width > padded.shape[1]:
        padded = nn.functional.pad(
            padded, (0, 0) * (padded.dim() - 2) + (0, width - padded.shape[1]), value=value
        )
    device = padded.device if device is None else device
    lengths = torch.tensor([len(t) for t in tensors], device=padded.device)
    mask = (torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]).long()
    return padded.to(device), mask.to(device)


def pad_batch(tok, rows: Sequence[Sequence[int]], device: torch.device | str | None = None) -> dict:
    """Right-padded model inputs for token-id rows: input_ids and attention_mask, both (B, T)."""
    ids, mask = right_pad(rows, pad_token_id(tok), device=device)
    return {"input_ids": ids, "attention_mask": mask}


def last_position(mask: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the last true position of each row of a (B, T) mask (left- or right-padded)."""
    return mask.size(1) - 1 - mask.long().flip(1).argmax(1)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...), index (B,) -> (B, ...): row i at position index[i]."""
    return x[torch.arange(x.shape[0], device=x.device), index.to(x.device)]


def edit_rows(
    tok, prompts: list[str], targets: list[str]
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Token rows prompt + target, their labels (IGNORE on prompt tokens) and each prompt's length."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    rows, labels, prompt_lens = [], [], []
    for prompt, target in zip(prompts, targets):
        p, t = prompt_ids(tok, prompt), target_ids(tok, target)
        rows.append(p + t)
        labels.append([IGNORE] * len(p) + t)
        prompt_lens.append(len(p))
    return rows, labels, prompt_lens


def edit_batch(tok, prompts: list[str], targets: list[str], device: torch.device | str = "cpu") -> dict:
    """Right-padded batch of prompt+target sequences; labels are IGNORE outside target tokens.

    Returns input_ids, attention_mask, labels (all (B, T)) and `prompt_lens`: list[int], the
    number of prompt tokens of each row (the target starts there).
    """
    rows, labels, prompt_lens = edit_rows(tok, prompts, targets)
    batch = pad_batch(tok, rows, device)
    batch["labels"] = right_pad(labels, IGNORE, device=device)[0]
    batch["prompt_lens"] = prompt_lens
    return batch


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens. logits (B, T, V), labels (B, T)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE
    )
