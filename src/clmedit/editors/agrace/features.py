"""Prompt features for A-GRACE: the down_proj input at one layer, pooled over the prompt tokens.

A-GRACE's key is built from the *mean* of the down_proj input over the prompt's tokens
(its ablation "agrace-last" uses the last prompt token, like GRACE). Encoder training needs
these features for thousands of prompts; they are extracted once, in right-padded batches
that stop right after the traced layer, and cached on disk as safetensors under
`$CLMEDIT_CACHE/features/`, keyed by (model, layer, pooling, sha256 of the prompts).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from clmedit.files import atomic_save_tensors, cache_root
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.text import gather_rows, last_position, model_name, pad_batch, prompt_ids

log = logging.getLogger(__name__)

Pool = Literal["mean", "last", "mean+last"]


def pool_tokens(inputs: torch.Tensor, mask: torch.Tensor, how: Pool) -> torch.Tensor:
    """Pool (B, T, d) over the positions where `mask` (B, T) is true -> (B, d), or (B, 2d) for both.

    mean: sum_t m_t x_t / sum_t m_t.   last: x at the last true position of each row.
    mean+last: the two side by side (what the prompt says overall, and the state it ends in).
    """
    if how == "mean+last":
        return torch.cat([pool_tokens(inputs, mask, "mean"), pool_tokens(inputs, mask, "last")], dim=-1)
    if how == "last":
        return gather_rows(inputs, last_position(mask))
    if how == "mean":
        mask = mask.to(inputs.dtype)
        return (inputs * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    raise ValueError(f"unknown pooling {how!r}; use 'mean', 'last' or 'mean+last'")


@torch.no_grad()
def prompt_features(
    model: nn.Module, tok, prompts: list[str], layer: int, how: Pool = "mean", batch_size: int = 32
) -> torch.Tensor:
    """(N, d_mlp) float32 on CPU: the down_proj input of `layer`, pooled over each prompt's tokens.

    Prompts are sorted by length so each batch pads little; the forward stops after `layer`.
    """
    path = arch_of(model).path("down_proj", layer)
    device = next(model.parameters()).device
    ids = [prompt_ids(tok, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[torch.Tensor | None] = [None] * len(ids)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc=f"features L{layer}", disable=len(chunks) < 4, leave=False):
        batch = pad_batch(tok, [ids[i] for i in chunk], device)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        with Trace(model, path, retain_input=True, retain_output=False, detach=True, stop=True) as tr:
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        pooled = pool_tokens(tr.input.float(), mask.bool(), how).cpu()
        for row, i in enumerate(chunk):
            out[i] = pooled[row]
    return torch.stack(out)  # type: ignore[arg-type]


def features_fingerprint(model: nn.Module, layer: int, how: Pool, prompts: list[str]) -> str:
    """A short hash naming (model, layer, pooling, prompts): the cache key."""
    h = hashlib.sha256(f"{model_name(model)}|{layer}|{how}|{len(prompts)}".encode())
    for p in prompts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:20]


def cached_prompt_features(
    model: nn.Module,
    tok,
    prompts: list[str],
    layer: int,
    how: Pool = "mean",
    cache: str | Path | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """`prompt_features`, read from / written to a safetensors cache file.

    cache: a folder (default `$CLMEDIT_CACHE/features`); pass False-y "" to disable.
    """
    if cache == "":
        return prompt_features(model, tok, prompts, layer, how, batch_size)
    if cache is None:
        cache = cache_root() / "features"
    path = Path(cache) / f"{features_fingerprint(model, layer, how, prompts)}.safetensors"
    if path.is_file():
        log.info("features: cache hit %s", path.name)
        return load_file(str(path))["features"]
    feats = prompt_features(model, tok, prompts, layer, how, batch_size)
    meta = {"layer": str(layer), "pool": how}
    atomic_save_tensors(path, {"features": feats.contiguous()}, metadata=meta)
    return feats
