"""WISE's side memory: a copy of one down_proj that answers only for inputs it was edited for.

`WiseMemory(inner, conv1d)` wraps a down_proj (the FFN value matrix W_v, (out, in)) and keeps
copies W' of it. For each input row the routing activation

    Δ_act(x) = mean_t || a_t(x) · (W' - W_v)^T ||_2        a_t: the down_proj input at token t

decides who answers: the side memory with the largest Δ_act among those whose Δ_act reaches
their threshold ε, else the main memory (the row's output is then bitwise `inner(x)`). The
decision is made once per prompt, at the prefill (over its non-padding tokens), and kept for
the tokens decoded after it with a KV cache; a call without a cache is a new decision.

Everything an edit created lives in buffers, so `state_dict()` holds the whole edit:
    side, side_threshold          the merged side memory and its ε (inf: holds no edit yet)
    shards, shard_thresholds      closed knowledge shards waiting for the next merge (S, out, in)
    work, work_mask, work_threshold  the shard being edited, its random gradient mask, its ε
    counts                        (edits in total, merges, edits in the working shard)
Until they are merged, closed shards and the working shard answer as memories of their own;
`merge` folds them (TIES) into the one side memory. Loading a state dict of another shape
(more shards) resizes the buffers first, so `load_state_dict` restores any saved memory.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from clmedit.editors.base import Undo, replace_module
from clmedit.models.hooks import CallObserver
from clmedit.models.text import call_mask

EDITS, MERGES, WORK_EDITS = 0, 1, 2  # indices into `counts`


class WiseMemory(CallObserver, nn.Module):
    """Wraps a down_proj; routes each row to the main memory or one side memory (see module doc)."""

    def __init__(self, inner: nn.Module, conv1d: bool = False):
        super().__init__()
        self.inner = inner
        self.conv1d = conv1d  # GPT-2 Conv1D stores (in, out)
        w = self.main_weight.detach()
        inf = torch.tensor(math.inf, device=w.device)
        self.register_buffer("side", w.clone())
        self.register_buffer("side_threshold", inf.clone())
        self.register_buffer("shards", w.new_empty(0, *w.shape))
        self.register_buffer("shard_thresholds", w.new_empty(0, dtype=torch.float32))
        self.register_buffer("work", w.clone())
        self.register_buffer("work_mask", torch.zeros(w.shape, dtype=torch.bool, device=w.device))
        self.register_buffer("work_threshold", inf.clone())
        self.register_buffer("counts", torch.zeros(3, dtype=torch.long, device=w.device))
        self.train_weight: torch.Tensor | None = None  # set while editing: every row uses it
        self.route: torch.Tensor | None = None  # (B,) memory per row of the last prefill, -1: main
        self.remove: Undo | None = None  # set by `attach`: takes the memory (and its hook) out again

    # --- weights ----------------------------------------------------------------------------
    @property
    def main_weight(self) -> torch.Tensor:
        """W_v as (out, in), whatever the storage convention."""
        return self.inner.weight.T if self.conv1d else self.inner.weight

    def side_output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x (..., in) through a side copy `weight` (out, in), with the layer's own bias."""
        bias = getattr(self.inner, "bias", None)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    def memories(self) -> list[tuple[torch.Tensor, float]]:
        """(weight (out, in), ε) of every side memory that holds edits: merged, closed shards, working."""
        found = [(self.side, float(self.side_threshold))]
        found += [(w, float(e)) for w, e in zip(self.shards, self.shard_thresholds)]
        found.append((self.work, float(self.work_threshold)))
        return [(w, e) for w, e in found if math.isfinite(e)]

    # --- routing ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in)
        call = self.take_call()
        if self.train_weight is not None:
            return self.side_output(x, self.train_weight)
        out = self.inner(x)
        memories = self.memories()
        if not memories:
            return out
        b, t = x.shape[:2]
        past = call["past"] if call else 0
        cached = past > 0 or (call is None and t == 1)
        if cached and self.route is not None and self.route.numel() == b:
            route = self.route
        else:
            route = self._decide(x, memories, call)
        if bool((route < 0).all()):
            return out
        out = out.clone()
        for m in route[route >= 0].unique().tolist():
            rows = route == m
            out[rows] = self.side_output(x[rows], memories[m][0]).to(out.dtype)
        return out

    @torch.no_grad()
    def _decide(self, x: torch.Tensor, memories: list, call: dict | None) -> torch.Tensor:
        """Route (B,) of a new prompt: argmax_m Δ_act over memories with Δ_act >= ε_m, else -1."""
        b, t = x.shape[:2]
        mask = call_mask(call.get("mask") if call else None, b, t, x.device)
        main = self.main_weight
        scores = torch.stack([activation(x, w - main.to(w.dtype), mask) for w, _ in memories])  # (M, B)
        eps = torch.tensor([e for _, e in memories], device=scores.device)
        scores = scores.masked_fill(scores < eps[:, None], -math.inf)
        best = scores.max(0)
        route = torch.where(torch.isfinite(best.values), best.indices, torch.full_like(best.indices, -1))
        self.route = route
        return route

    # --- shard bookkeeping (called by the editor) ----------------------------------------------
    @torch.no_grad()
    def start_shard(self, mask: torch.Tensor) -> None:
        """Begin a knowledge shard: W' = W_v, edited only where `mask` (out, in) is true."""
        self.work.copy_(self.main_weight)
        self.work_mask.copy_(mask)
        self.work_threshold.fill_(math.inf)
        self.counts[WORK_EDITS] = 0

    @torch.no_grad()
    def record_edit(self, weight: torch.Tensor, threshold: float) -> None:
        """Keep the trained shard weight; ε of the shard is the lowest over its edits."""
        self.work.copy_(weight)
        self.work_threshold.fill_(min(float(self.work_threshold), threshold))
        self.counts[EDITS] += 1
        self.counts[WORK_EDITS] += 1

    @torch.no_grad()
    def close_shard(self) -> None:
        """The working shard is full: park it until the merge and start empty."""
        if not math.isfinite(float(self.work_threshold)):
            return
        self.shards = torch.cat([self.shards, self.work[None].clone()])
        self.shard_thresholds = torch.cat([self.shard_thresholds, self.work_threshold[None].float()])
        self.work.copy_(self.main_weight)
        self.work_mask.zero_()
        self.work_threshold.fill_(math.inf)
        self.counts[WORK_EDITS] = 0

    @torch.no_grad()
    def merge(self, density: float) -> None:
        """Fold the closed shards (and the earlier side memory) into one side memory by TIES.

        W' = W_v + ties({W_i - W_v}); its ε is the lowest of the merged memories' thresholds.
        """
        if len(self.shards) == 0:
            return
        base = self.main_weight.float()
        parts = list(self.shards.float())
        eps = self.shard_thresholds.tolist()
        if math.isfinite(float(self.side_threshold)):
            parts.append(self.side.float())
            eps.append(float(self.side_threshold))
        merged = base + ties_merge(torch.stack([w - base for w in parts]), density)
        self.side.copy_(merged.to(self.side.dtype))
        self.side_threshold.fill_(min(eps))
        self.shards = self.shards[:0]
        self.shard_thresholds = self.shard_thresholds[:0]
        self.counts[MERGES] += 1

    def edit_state(self) -> dict[str, torch.Tensor]:
        """The buffers that make up the edit (not the wrapped layer's weights): what a fix file saves.

        Restore with `WiseMemory(layer, conv1d).load_state_dict(state, strict=False)` + `attach`.
        """
        return {name: buf.detach().clone() for name, buf in self.named_buffers(recurse=False)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("shards", "shard_thresholds"):  # their length varies with the edit history
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=self.side.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def activation(x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Δ_act per row: mean over true positions of mask (B, T) of ||x_t · delta^T||. x (B, T, in)."""
    norms = F.linear(x.to(delta.dtype), delta).float().norm(dim=-1)  # (B, T)
    mask = mask.to(norms.dtype)
    return (norms * mask).sum(1) / mask.sum(1).clamp(min=1)


def ties_merge(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """TIES merge (Yadav et al., 2023) of task vectors (K, ...) with equal weights.

    Trim: keep each vector's top `density` fraction of entries by magnitude. Elect: the sign of
    the sum per entry. Merge: per entry, the mean of the kept values that agree with that sign.
    """
    k = deltas.shape[0]
    flat = deltas.reshape(k, -1)
    keep = max(1, int(round(density * flat.shape[1])))
    if keep < flat.shape[1]:
        cut = flat.abs().kthvalue(flat.shape[1] - keep + 1, dim=1, keepdim=True).values
        flat = torch.where(flat.abs() >= cut, flat, torch.zeros_like(flat))
    sign = torch.where(flat.sum(0) >= 0, 1.0, -1.0).to(flat.dtype)
    agree = flat.sign() == sign
    total = (flat * agree).sum(0)
    count = agree.sum(0).clamp(min=1)
    return (total / count).reshape(deltas.shape[1:])


def attach(model: nn.Module, path: str, memory: WiseMemory) -> Undo:
    """Put `memory` at `path` with its model pre-hook; the returned function (also kept as
    `memory.remove`, for later edits of the same memory) takes both out again. Idempotent."""
    put_back = replace_module(model, path, memory)
    handle = model.register_forward_pre_hook(memory.observe, with_kwargs=True)

    def remove() -> None:
        handle.remove()
        if model.get_submodule(path) is memory:
            put_back()

    memory.remove = remove
    return remove
