"""Tokenization shared by editors and evaluation, so both see the exact same token sequences.

As the study's code builds them (it sets `add_bos_token=False` for every model):
- no special token anywhere: every text is encoded with `add_special_tokens=False`, whatever
  the tokenizer's default (no BOS, no EOS);
- a training sequence is `prompt + " " + target` tokenized *together*; the target's tokens are
  what follows the prompt's own tokens (so SentencePiece tokenizers get no stray lone "▁");
- the generation budget of the effectiveness check is `len(encode(target))`;
- `token_type_ids` (CodeQwen's tokenizer returns them) never reach a model: `model_inputs`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips


def encode(tok, text: str) -> list[int]:
    """Token ids of `text` without special tokens (the study's `add_bos_token=False`)."""
    return list(tok(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tok, prompt: str) -> list[int]:
    """The prompt's ids, exactly as generation and key extraction feed them (no BOS)."""
    return encode(tok, prompt)


def sequence_ids(tok, prompt: str, target: str) -> tuple[list[int], int]:
    """(ids of `prompt + " " + target` tokenized together, number of prompt tokens).

    The target is what follows the prompt's own ids. When the joint tokenization does not
    start with them (a merge across the boundary), the split falls at their common prefix, so
    every token that differs from the prompt is a target token.
    """
    ids, p = encode(tok, f"{prompt} {target}"), prompt_ids(tok, prompt)
    split = len(p)
    if ids[:split] != p:
        split = next((i for i, (a, b) in enumerate(zip(ids, p)) if a != b), min(len(ids), len(p)))
        log.warning("prompt %r: its ids are not a prefix of prompt + target's; target starts at token %d",
                    prompt[-40:], split)  # fmt: skip
    return ids, split


def target_ids(tok, prompt: str, target: str) -> list[int]:
    """The target's ids as they follow the prompt in `prompt + " " + target`."""
    ids, split = sequence_ids(tok, prompt, target)
    return ids[split:]


def generation_budget(tok, target: str) -> int:
    """max_new_tokens of the effectiveness check: `len(tok.encode(target))` without special tokens."""
    return len(encode(tok, target))


def model_inputs(enc) -> dict:
    """A tokenizer's output as model keyword arguments, without `token_type_ids`."""
    return {k: v for k, v in dict(enc).items() if k != "token_type_ids"}


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
        ids, p = sequence_ids(tok, prompt, target)
        rows.append(ids)
        labels.append([IGNORE] * p + ids[p:])
        prompt_lens.append(p)
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
