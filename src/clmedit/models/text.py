"""Tokenization shared by editors and evaluation, so both see the exact same token sequences.

The study's training sequence is `prompt + " " + target` with the loss on target tokens only.
We build it as prompt ids followed by the ids of `" " + target`, so the target's tokens are
exactly what greedy decoding after the prompt must produce, and `len(target_ids)` is the
`max_new_tokens` of the effectiveness check.
"""

from __future__ import annotations

import torch
from torch import nn

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


def edit_batch(tok, prompts: list[str], targets: list[str], device: torch.device | str = "cpu") -> dict:
    """Right-padded batch of prompt+target sequences; labels are IGNORE outside target tokens.

    Returns input_ids, attention_mask, labels (all (B, T)) and `prompt_lens`: list[int], the
    number of prompt tokens of each row (the target starts there).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    rows, labels, prompt_lens = [], [], []
    for prompt, target in zip(prompts, targets):
        p, t = prompt_ids(tok, prompt), target_ids(tok, target)
        rows.append(p + t)
        labels.append([IGNORE] * len(p) + t)
        prompt_lens.append(len(p))
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_t = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        label_t[i, : len(lab)] = torch.tensor(lab)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "labels": label_t.to(device),
        "prompt_lens": prompt_lens,
    }


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens. logits (B, T, V), labels (B, T)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE
    )
