"""Run a causal LM from the hidden state entering layer L: the upper stack only.

Editors that optimise something at layer L (a down_proj weight, a value vector) change
nothing below L, so the residual stream entering L is a constant of the optimisation.
Computing it once and running only layers L..N-1 (+ final norm + unembedding) per step
makes each step cost what the gradient must traverse, not the whole model:

    stack = UpperStack(model, layer, input_ids, attention_mask)   # one full-depth pass, no grad
    for _ in range(steps):
        logits = stack()                                          # layers L.. only; (B, T, V)

Invariant: `forward_from(model, L, hidden_before(model, L, ids, mask), mask)` equals
`model(ids, attention_mask=mask).logits` (allclose) for every supported family.

How: rather than re-implementing each family's forward (rotary tables, causal / sliding-window
masks, GPT-2's learned positions), we call the model's own forward, with layers 0..L-1
temporarily swapped for a pass-through and a pre-hook on layer L that substitutes the cached
hidden state. Masks and position embeddings are therefore built exactly as the full model
builds them; only the lower blocks' compute is skipped. The swap is undone in a `finally`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace


class _PassThrough(nn.Module):
    """Stands in for a skipped decoder block: returns its hidden-state input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@torch.no_grad()
def hidden_before(
    model: nn.Module,
    layer: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The residual stream entering decoder block `layer`: (B, T, d_model), detached.

    The forward pass stops as soon as block `layer` is reached (nothing above it runs).
    """
    blocks = arch_of(model).blocks(model)
    if not 0 <= layer < len(blocks):
        raise IndexError(f"layer {layer} out of range for a {len(blocks)}-layer model")
    with Trace(model, blocks[layer], retain_input=True, retain_output=False, detach=True, stop=True) as tr:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return tr.input


@contextmanager
def _skip_below(model: nn.Module, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Within the block: blocks < layer do nothing and block `layer` receives `hidden`."""
    blocks = arch_of(model).blocks(model)
    originals = [blocks[i] for i in range(layer)]

    def substitute(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = blocks[layer].register_forward_pre_hook(substitute, with_kwargs=True)
    try:
        for i in range(layer):
            blocks[i] = _PassThrough()
        yield
    finally:
        handle.remove()
        for i, block in enumerate(originals):
            blocks[i] = block


def forward_from(
    model: nn.Module,
    layer: int,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Logits (B, T, V) of the model when block `layer` receives `hidden` (B, T, d_model).

    `attention_mask` / `position_ids` are what the full forward would get for the same batch
    (the masks and rotary/learned positions are built by the model's own code). Gradients
    flow into the parameters of blocks >= layer, the final norm and the unembedding, and
    into `hidden` if it requires grad. Hooks (Trace) on upper modules fire as usual.
    """
    blocks = arch_of(model).blocks(model)
    if not 0 <= layer < len(blocks):
        raise IndexError(f"layer {layer} out of range for a {len(blocks)}-layer model")
    # The embedding output is discarded by the pre-hook; any tensor of the right shape will do.
    placeholder = hidden.detach()
    with _skip_below(model, layer, hidden):
        out = model(
            inputs_embeds=placeholder,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
    return out.logits


@contextmanager
def trainable_only(model: nn.Module, params: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Within the block only `params` require grad (all other parameters are frozen).

    Optimising a value vector or one weight must not make backward compute (and store in
    `.grad`) gradients of every weight above the edited layer. Flags are restored on exit.
    """
    keep = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class UpperStack:
    """A batch frozen below `layer`: computes the hidden state once, then runs layers L.. per call.

    stack = UpperStack(model, layer, input_ids, attention_mask); logits = stack()
    """

    def __init__(
        self,
        model: nn.Module,
        layer: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ):
        self.model, self.layer = model, layer
        self.attention_mask, self.position_ids = attention_mask, position_ids
        extra = {"position_ids": position_ids} if position_ids is not None else {}
        self.hidden = hidden_before(model, layer, input_ids, attention_mask, **extra)  # (B, T, d)

    def __call__(self, **kwargs: Any) -> torch.Tensor:
        return forward_from(
            self.model, self.layer, self.hidden, self.attention_mask, self.position_ids, **kwargs
        )
