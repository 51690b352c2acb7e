"""The rewordings SCOPE makes itself, as the build makes rephrases (data.augment): of training
neighbours (extra positive pairs for the encoder) and of an edited prompt (its rewrite keys)."""

from __future__ import annotations

from typing import Any

import torch

from clmedit.data.augment import rewrite_prompts


def neighbour_rewrites(cases: list[Any], seed: int) -> list[tuple[int, int, str]]:
    """(owning case's index, the neighbour's row in the flattened neighbours, its rewrite) for every
    training neighbour the build's rewriter can reword."""
    nbs = [(i, n.prompt, c.task) for i, c in enumerate(cases) for n in c.neighbours]
    new: list[str | None] = [None] * len(nbs)
    for task in {t for _, _, t in nbs}:
        rows = [k for k, (_, _, t) in enumerate(nbs) if t == task]
        for k, text in zip(rows, rewrite_prompts(task, [nbs[k][1] for k in rows], seed)):
            new[k] = text
    return [(nbs[k][0], k, text) for k, text in enumerate(new) if text is not None]


def prompt_rewrites(hp: Any, task: str, prompt: str) -> list[str]:
    """Up to `edit_rewrites` distinct rewrites of one formatted prompt, made as the build makes
    rephrases: CSNE's identifier renamings, one per seed, with other names than the build drew.
    CNLE's rule rewording is deterministic: it *is* the build's rephrase, so its key would say
    nothing about other rewordings, and CNLE edits take none by default."""
    count = hp.edit_rewrites
    if count is None:
        count = hp.edit_rewrites_csne if task == "csne" else hp.edit_rewrites_cnle
    out: list[str] = []
    for j in range(count):
        text = rewrite_prompts(task, [prompt], hp.seed + 1 + j)[0]
        if text is not None and text not in out:
            out.append(text)
    return out


def stack_rewrites(counts: list[int], feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, J, d) from `feats` (sum(counts), d) laid out case by case, and which exist (N, J)."""
    width = max(counts, default=0)
    out = torch.zeros(len(counts), width, feats.shape[1], dtype=feats.dtype)
    exists = torch.zeros(len(counts), width, dtype=torch.bool)
    row = 0
    for i, count in enumerate(counts):
        out[i, :count] = feats[row : row + count]
        exists[i, :count] = True
        row += count
    return out, exists
