"""Architecture adapters, the hook utility, shared tokenization and the cost meter on every tiny family."""

import pytest
import torch

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


def test_unknown_model_type_names_what_to_add():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "phi3"})()

    with pytest.raises(NotImplementedError, match=r"'phi3' has no ArchAdapter.*models/arch.py"):
        arch_of(Fake())


def test_rescale_layer():
    assert rescale_layer(21, 30) == 20
    assert rescale_layer(27, 30) == 25
    assert rescale_layer(5, 32) == 5
    assert rescale_layer(31, 4) == 3
    assert rescale_layer(-1, 30) == 29


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
    model, tok = llama_tiny
    arch = arch_of(model)
    batch = tok(["Code: x = 1\nDescription:"], return_tensors="pt")
    with TraceDict(model, [arch.path("down_proj", 0), arch.path("mlp", 1)], stop=True) as td:
        model(**batch)
    assert td[arch.path("down_proj", 0)].output is not None
    assert td[arch.path("mlp", 1)].output is not None


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
