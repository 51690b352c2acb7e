"""forward_from / UpperStack: running only the upper stack reproduces the full forward."""

from __future__ import annotations

import pytest
import torch

from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.partial import UpperStack, forward_from, hidden_before, trainable_only
from clmedit.models.text import edit_batch


def _batch(tok):
    # right-padded rows of different lengths: masks and positions must match the full forward
    return edit_batch(
        tok, ["Intent: sort a list\nCode:", "Intent: x\nCode:"], ["sorted(x)", "os.path.join(a, b)"]
    )


def test_upper_stack_matches_full_forward(family_model):
    _, model, tok = family_model
    b = _batch(tok)
    with torch.no_grad():
        full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        for layer in range(arch_of(model).num_layers(model)):
            logits = UpperStack(model, layer, b["input_ids"], b["attention_mask"])()
            assert torch.allclose(logits, full, atol=1e-5), layer
    # the lower blocks are back in place afterwards
    assert all(type(blk).__name__ != "_PassThrough" for blk in arch_of(model).blocks(model))


def test_forward_from_uses_the_given_hidden_state(llama_tiny):
    model, tok = llama_tiny
    b = _batch(tok)
    hidden = hidden_before(model, 2, b["input_ids"], b["attention_mask"])
    shifted = forward_from(model, 2, hidden + 1.0, b["attention_mask"])
    plain = forward_from(model, 2, hidden, b["attention_mask"])
    assert not torch.allclose(shifted, plain)
    with pytest.raises(IndexError):
        forward_from(model, 9, hidden, b["attention_mask"])


def test_gradients_reach_only_the_upper_stack(llama_tiny):
    model, tok = llama_tiny
    b = _batch(tok)
    arch = arch_of(model)
    low, high = arch.down_proj_module(model, 0).weight, arch.down_proj_module(model, 2).weight
    seen = []
    with Trace(
        model, arch.path("down_proj", 0), retain_output=False, edit_output=lambda o, i: seen.append(1) or o
    ):
        stack = UpperStack(model, 2, b["input_ids"], b["attention_mask"])  # runs layer 0 once
        with trainable_only(model, [low, high]):
            stack().sum().backward()
    assert len(seen) == 1  # layer 0 is not run again by the upper-stack call
    assert low.grad is None and high.grad is not None
    assert all(p.requires_grad for p in model.parameters())
