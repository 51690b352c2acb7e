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
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

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


def in_context_budget(tok, prompt: str, target: str) -> int:
    """The target's tokens as they follow `prompt` (`target_ids`): the fewest new tokens that can spell it.

    It can exceed `generation_budget` (SmolLM2: "Align ..." is 8 tokens alone, 9 after "Description:").
    """
    return len(target_ids(tok, prompt, target))


def model_inputs(enc) -> dict:
    """A tokenizer's output as model keyword arguments, without `token_type_ids`."""
    return {k: v for k, v in dict(enc).items() if k != "token_type_ids"}


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


def call_mask(mask: torch.Tensor | None, b: int, t: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool mask of a forward call's T newest positions, from the model's attention mask.

    A missing mask, or one that does not cover the call (another batch), counts every position.
    """
    if mask is None or mask.shape[0] != b or mask.shape[1] < t:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    return mask[:, -t:].bool()


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
        ids, p = sequence_ids(tok, prompt, target)
        rows.append(ids)
        labels.append([IGNORE] * p + ids[p:])
        prompt_lens.append(p)
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


def target_decodes(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """True iff every target token is the argmax of the logits before it (teacher-forced).

    Same shapes and shift as `target_nll`. Under causal attention greedy decoding reproduces a
    teacher-forced forward token for token, so this says the target is what greedy decoding gives.
    """
    pred = logits[:, :-1].argmax(-1)
    shift_labels = labels[:, 1:]
    scored = shift_labels != IGNORE
    return bool(((pred == shift_labels) | ~scored).all())
