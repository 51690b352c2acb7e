"""MALMEN's raw material: (key, value-gradient) pairs of each edited down_proj, per target token.

For the edit loss L = sum_c mean_{t in target(c)} -log p(y_t | y_<t, x_c) of the *unedited*
model, each edited layer l and each position t that predicts a target token gives

    u_t = input of down_proj_l at t        (d_mlp)
    g_t = dL / d(output of down_proj_l at t)   (d_model)

so that dL/dW_l = sum_t g_t u_t^T. Gradients are read through a zero tensor added to each
traced output (dL/dz = dL/d out), which works even when the model's parameters are frozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from clmedit.data.schema import EditCase
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.text import IGNORE, edit_batch


def _add_zero(zeros: dict[int, torch.Tensor], layer: int):
    """An edit_output hook returning out + z with a fresh zero leaf z stored in zeros[layer]."""

    def edit(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        zeros[layer] = torch.zeros_like(out, requires_grad=True)
        return out + zeros[layer]

    return edit


@dataclass
class Pairs:
    """keys[l] (n, d_mlp), grads[l] (n, d_model) per edited layer l; owner (n,) = case index of each row."""

    keys: dict[int, torch.Tensor]
    grads: dict[int, torch.Tensor]
    owner: torch.Tensor

    def select(self, case_idx: list[int]) -> Pairs:
        wanted = torch.tensor(case_idx, dtype=self.owner.dtype, device=self.owner.device)
        rows = torch.isin(self.owner, wanted)
        return Pairs(
            {k: v[rows] for k, v in self.keys.items()},
            {k: v[rows] for k, v in self.grads.items()},
            self.owner[rows],
        )


def key_grad_pairs(
    model: nn.Module,
    tok,
    cases: list[EditCase],
    layers: list[int],
    batch_size: int = 8,
    tokens: str = "target",
) -> Pairs:
    """The pairs of all `cases` at `layers`, float32 on the model's device; the model is not changed.

    tokens: "target" keeps the positions that predict a target token (MALMEN's answer tokens);
    "all" keeps every real position, so that sum_t g_t u_t^T is exactly dL/dW.
    """
    chunks = list(iter_key_grad_pairs(model, tok, cases, layers, batch_size, tokens))
    return Pairs(
        {l_: torch.cat([c.keys[l_] for c in chunks]) for l_ in layers},
        {l_: torch.cat([c.grads[l_] for c in chunks]) for l_ in layers},
        torch.cat([c.owner for c in chunks]),
    )


def iter_key_grad_pairs(
    model: nn.Module,
    tok,
    cases: list[EditCase],
    layers: list[int],
    batch_size: int = 8,
    tokens: str = "target",
) -> Iterator[Pairs]:
    """key_grad_pairs one chunk of `batch_size` cases at a time (owner = index into `cases`), so a
    caller can move each chunk off the device before the next is computed."""
    if tokens not in ("target", "all"):
        raise ValueError(f"tokens must be 'target' or 'all', not {tokens!r}")
    arch = arch_of(model)
    paths = {layer: arch.path("down_proj", layer) for layer in layers}
    device = next(model.parameters()).device
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        batch = edit_batch(tok, [c.prompt for c in chunk], [c.target for c in chunk], device)
        labels = batch["labels"]
        predicts = torch.zeros_like(labels, dtype=torch.bool)  # position t predicts token t+1
        predicts[:, :-1] = labels[:, 1:] != IGNORE
        if tokens == "all":
            predicts = batch["attention_mask"].bool()
        zeros: dict[int, torch.Tensor] = {}
        with torch.enable_grad():
            traces = [
                Trace(
                    model, paths[l_], retain_input=True, retain_output=False, edit_output=_add_zero(zeros, l_)
                )
                for l_ in layers
            ]
            try:
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                ).logits
            finally:
                for tr in traces:
                    tr.close()
            nll = nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none"
            )  # (B, T-1)
            per_case = nll.sum(1) / (labels[:, 1:] != IGNORE).sum(1).clamp_min(1)
            got = torch.autograd.grad(per_case.sum(), [zeros[l_] for l_ in layers])
        rows = predicts.sum(1)
        yield Pairs(
            {l_: tr.input.detach()[predicts].float() for l_, tr in zip(layers, traces)},
            {l_: g[predicts].float() for l_, g in zip(layers, got)},
            torch.repeat_interleave(torch.arange(start, start + len(chunk), device=device), rows),
        )
