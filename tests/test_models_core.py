"""Architecture adapters, the hook utility, shared tokenization and the cost meter on every tiny family."""

import pytest
import torch

from clmedit.errors import InputError, UnsupportedModelError
from clmedit.models.arch import ADAPTERS, arch_of, rescale_layer
from clmedit.models.cost import CostMeter
from clmedit.models.hooks import Trace, TraceDict
from clmedit.models.text import IGNORE, edit_batch, target_ids, target_nll
from clmedit.models.tiny import FAMILIES


def test_every_tiny_family_has_an_adapter():
    assert set(FAMILIES) <= set(ADAPTERS)


def test_adapter_paths_resolve(family_model):
    family, model, _ = family_model
    arch = arch_of(model)
    n = arch.num_layers(model)
    assert n == 4
    for part in ("mlp", "down_proj", "attn", "attn_out"):
        assert isinstance(arch.module(model, part, n - 1), torch.nn.Module)
    for part in ("final_norm", "embed", "lm_head"):
        assert isinstance(arch.module(model, part), torch.nn.Module)
    w = arch.weight_out_in(arch.down_proj_module(model, 0))
    assert w.shape == (64, 128), f"{family}: down_proj must map d_mlp=128 -> d_model=64"
    # a norm between the MLP and the residual add must be declared (Gemma 2/3, OLMo 2)
    block = arch.blocks(model)[0]
    assert (arch.post_mlp_norm is not None) == hasattr(block, "post_feedforward_layernorm"), family
    if arch.post_mlp_norm is not None:
        assert isinstance(arch.module(model, "post_mlp_norm", 0), torch.nn.Module)


def test_unknown_model_type_names_what_to_add():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "mamba"})()

    with pytest.raises(UnsupportedModelError, match=r"'mamba' has no ArchAdapter.*models/arch.py"):
        arch_of(Fake())


def test_rescale_layer():
    assert rescale_layer(21, 30) == 20
    assert rescale_layer(27, 30) == 25
    assert rescale_layer(5, 32) == 5
    assert rescale_layer(31, 4) == 3
    assert rescale_layer(-1, 30) == 29
    for bad in (32, 40, -33):  # outside the reference depth: rejected, never clamped to the top
        with pytest.raises(InputError, match=f"layer {bad} is out of range for 32 layers"):
            rescale_layer(bad, 30)


def test_trace_captures_and_edits(family_model):
    _, model, tok = family_model
    arch = arch_of(model)
    batch = tok(["Intent: sort a list\nCode:"], return_tensors="pt")
    path = arch.path("down_proj", 1)
    with torch.no_grad():
        base = model(**batch).logits
        with Trace(model, path, retain_input=True) as tr:
            again = model(**batch).logits
        assert torch.equal(base, again)
        assert tr.input.shape[-1] == 128 and tr.output.shape[-1] == 64
        with Trace(model, path, edit_output=lambda out, inp: out + 1.0):
            edited = model(**batch).logits
        assert not torch.allclose(base, edited)
        # hooks are gone after the block
        assert torch.equal(model(**batch).logits, base)


def test_trace_stop_cuts_the_forward_pass(llama_tiny):
    """With stop=True nothing after the last traced module runs; without it everything does."""
    model, tok = llama_tiny
    arch = arch_of(model)
    batch = tok(["Code: x = 1\nDescription:"], return_tensors="pt")
    ran: list[str] = []
    later = [arch.path("mlp", 2), arch.path("final_norm"), arch.path("lm_head")]
    handles = [
        model.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: ran.append(p)) for p in later
    ]
    try:
        for stop in (True, False):
            ran.clear()
            out = None
            with TraceDict(model, [arch.path("down_proj", 0), arch.path("mlp", 1)], stop=stop) as td:
                out = model(**batch)
            assert td[arch.path("down_proj", 0)].output is not None
            assert td[arch.path("mlp", 1)].output is not None
            assert (ran, out) == ([], None) if stop else (ran == later and out is not None)
    finally:
        for h in handles:
            h.remove()


def test_edit_batch_masks_everything_but_the_target(llama_tiny):
    _, tok = llama_tiny
    prompts = ["Intent: a\nCode:", "Intent: longer prompt here\nCode:"]
    batch = edit_batch(tok, prompts, ["x", "sorted(xs)"])
    labels, mask = batch["labels"], batch["attention_mask"]
    for row, plen in enumerate(batch["prompt_lens"]):
        t = target_ids(tok, prompts[row], ["x", "sorted(xs)"][row])
        assert labels[row, :plen].eq(IGNORE).all()
        assert labels[row, plen : plen + len(t)].tolist() == t
        assert mask[row].sum() == plen + len(t)


def test_target_nll_is_lower_for_the_models_own_continuation(llama_tiny):
    model, tok = llama_tiny
    prompt = "Intent: sort a list\nCode:"
    with torch.no_grad():
        ids = tok(prompt, return_tensors="pt").input_ids
        greedy = model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1] :]
        own = tok.decode(greedy)
        b = edit_batch(tok, [prompt], [own.lstrip()])
        nll_own = target_nll(model(input_ids=b["input_ids"]).logits, b["labels"])
        b2 = edit_batch(tok, [prompt], ["json.load(f)"])
        nll_other = target_nll(model(input_ids=b2["input_ids"]).logits, b2["labels"])
    assert nll_own < nll_other


def test_cost_meter_sees_a_large_allocation():
    with CostMeter() as small:
        torch.zeros(10)
    with CostMeter() as big:
        x = torch.ones(64 * 1024 * 1024 // 4 * 4)  # 256 MiB of float32
        x += 1
    assert big.peak_bytes > small.peak_bytes
    assert big.peak_bytes >= 256 * 1024 * 1024
    assert big.seconds > 0
