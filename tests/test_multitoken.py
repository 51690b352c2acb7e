"""ROME, MEMIT and PMET make a model produce a multi-token target.

These editors write one change at the prompt's last token; the later target tokens come from
what the model already knows about the first one. A random tiny model knows nothing, so it is
first taught briefly that "os" continues as ".path" (after other prompts, never saying "os"
itself). The edit must then make the edited prompt yield all four tokens of "os.path", which
the model did not say before, and restore must be bitwise.
"""

from __future__ import annotations

import pytest
import torch

from clmedit.editors.base import get_editor
from clmedit.models.text import IGNORE, edit_batch, target_ids, target_nll
from clmedit.models.tiny import tiny_model
from tests.conftest import greedy_ids, make_case

TARGET = "os.path"
# looser than the study's only where a tiny model needs it; corpus statistics good enough that
# MEMIT's update stays on the edit key instead of rewriting every position
# the prompt alone (context_keys off): a random model's generated prefixes are noise tokens, and this
# test is about the later target tokens, not about the study's context averaging (test_locate has that)
SETTINGS = dict(steps=60, clamp_factor=10.0, stats_samples=32, stats_seq_len=32, mom2_weight=100.0,
                context_keys=False)  # fmt: skip


@pytest.fixture(scope="module")
def taught():
    """A tiny llama that continues "os" with ".path" but does not say "os" after our prompts."""
    model, tok = tiny_model("llama")
    b = edit_batch(tok, [make_case(i).prompt for i in range(10, 26)], [TARGET] * 16)
    labels = b["labels"].clone()
    for row, p in enumerate(b["prompt_lens"]):
        labels[row, p] = IGNORE  # learn the continuation only
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = target_nll(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval(), tok


@pytest.mark.parametrize("name", ["rome", "memit", "pmet"])
def test_edit_yields_every_token_of_a_multi_token_target(name, taught, tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path))  # statistics of this taught model only
    model, tok = taught
    want = target_ids(tok, make_case(0).prompt, TARGET)
    assert len(want) == 4
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # more value steps than the study's (the prompt's own KL pulls against the edit at its last token);
    # MEMIT/PMET below the top layer with a tighter clamp, or their delta reaches every position
    extra = {"steps": 120}
    if name != "rome":
        extra.update(layers=[0, 1], reference_layers=4, clamp_factor=6.0)
    editor = get_editor(name, **{**SETTINGS, **extra})
    for i in range(2):
        case = make_case(i, target=TARGET)
        assert greedy_ids(model, tok, case.prompt, len(want)) != want
        result = editor.apply(model, tok, [case])
        try:
            got = greedy_ids(model, tok, case.prompt, len(want))
        finally:
            result.restore()  # the taught model is shared by the module's tests
        assert got == want, f"{name}, case {i}"
        assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
