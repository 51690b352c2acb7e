"""Batched, left-padded generation equals one-prompt-at-a-time generation."""

from __future__ import annotations

import pytest
import torch

from clmedit.eval.generate import _decode_new, generate
from clmedit.models.tiny import tiny_model

PROMPTS = [
    "Intent: sort a list in reverse order\nCode:",
    "Code: def add(a, b):\n    return a + b\nDescription:",
    "x",
    "Intent: join two paths\nCode:",
    "import os, sys, re, json\nfor i in range(10): print(i)",
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_batched_greedy_equals_unbatched(family):
    model, tok = tiny_model(family)
    single = [generate(model, tok, [p], 10)[0] for p in PROMPTS]
    assert generate(model, tok, PROMPTS, 10) == single
    assert generate(model, tok, PROMPTS, 10, batch_size=2) == single
    assert tok.padding_side == "right"  # restored after generation


def test_output_is_new_tokens_only():
    model, tok = tiny_model("llama")
    enc = tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        full = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(full[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert generate(model, tok, [PROMPTS[0]], 6) == [expected]
    assert generate(model, tok, PROMPTS[:2], 0) == ["", ""]
    assert generate(model, tok, [], 5) == []


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    model, tok = tiny_model("llama")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(model, tok, PROMPTS, 12, do_sample=True, top_k=5, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(model, tok, PROMPTS, 12, do_sample=True, top_k=5, seed=7)
    c = generate(model, tok, PROMPTS, 12, do_sample=True, top_k=5, seed=8)
    assert a == b
    assert a != c


def test_generation_stops_at_eos():
    model, tok = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: argmax is id 0, the tiny tokenizer's eos
    assert tok.eos_token_id == 0
    assert generate(model, tok, PROMPTS, 8) == [""] * len(PROMPTS)


def test_decode_cuts_each_row_at_its_first_eos():
    _, tok = tiny_model("llama")
    a = tok(" return", add_special_tokens=False)["input_ids"]
    b = tok(" a + b", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    rows = [a + [eos] + b, b + [eos]]  # row 0 goes on after its eos; that part must be dropped
    width = max(map(len, rows))
    rows = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    assert _decode_new(tok, rows, {eos}) == [" return", " a + b"]
