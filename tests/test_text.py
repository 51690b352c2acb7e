"""The shared batch helpers of models/text.py: padding, the pad-token rule, last positions."""

from __future__ import annotations

import copy

import torch

from clmedit.models.text import (
    IGNORE,
    edit_batch,
    gather_rows,
    last_position,
    pad_batch,
    pad_token_id,
    prompt_ids,
    right_pad,
)


def test_pad_token_falls_back_to_eos_then_the_default(llama_tiny):
    _, tok = llama_tiny
    tok = copy.deepcopy(tok)
    assert tok.pad_token_id is not None and pad_token_id(tok) == tok.pad_token_id
    tok.pad_token = None
    assert tok.pad_token_id is None and pad_token_id(tok) == tok.eos_token_id
    tok.eos_token = None
    assert pad_token_id(tok) == 0 and pad_token_id(tok, default=None) is None


def test_right_pad_token_rows_and_vectors():
    ids, mask = right_pad([[5, 6, 7], [8]], value=-1)
    assert ids.tolist() == [[5, 6, 7], [8, -1, -1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    hidden, mask = right_pad([torch.ones(2, 4), torch.ones(3, 4)], value=0.0, width=5)
    assert hidden.shape == (2, 5, 4) and hidden.dtype == torch.float32
    assert hidden[0, 2:].abs().sum() == 0 and hidden[1, :3].eq(1).all() and hidden[1, 3:].eq(0).all()
    assert mask.sum(1).tolist() == [2, 3]


def test_last_position_left_and_right_padded():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_position(right).tolist() == [2, 0]
    assert last_position(left.bool()).tolist() == [3, 3]
    x = torch.arange(8).reshape(2, 4)
    assert gather_rows(x, last_position(right)).tolist() == [2, 4]


@torch.no_grad()
def test_padded_rows_see_what_they_see_alone(llama_tiny):
    """Right padding must not change a row's real positions (the reason every batch is right-padded)."""
    model, tok = llama_tiny
    prompts = ["Intent: a\nCode:", "Intent: read a json file from disk please\nCode:"]
    rows = [prompt_ids(tok, p) for p in prompts]
    batch = pad_batch(tok, rows)
    padded = model(**batch).logits
    for i, r in enumerate(rows):
        alone = model(input_ids=torch.tensor([r])).logits[0]
        torch.testing.assert_close(padded[i, : len(r)], alone, rtol=1e-4, atol=1e-5)
    assert batch["input_ids"][0, len(rows[0]) :].eq(pad_token_id(tok)).all()


def test_edit_batch_labels_are_the_target_tokens_only(llama_tiny):
    _, tok = llama_tiny
    batch = edit_batch(tok, ["Intent: a\nCode:", "Intent: longer one\nCode:"], ["x", "sorted(xs)"])
    for i, p in enumerate(batch["prompt_lens"]):
        n = int(batch["attention_mask"][i].sum())
        labels = batch["labels"][i]
        assert labels[:p].eq(IGNORE).all() and labels[n:].eq(IGNORE).all()
        assert labels[p:n].tolist() == batch["input_ids"][i, p:n].tolist()
