"""Precision: --dtype on load and run, and FT-L's float32 master copy in a bfloat16 model."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from clmedit.config import preset_path
from clmedit.editors.base import editor_class, editor_names, get_editor
from clmedit.errors import InputError
from clmedit.models.load import load_model, resolve_dtype
from clmedit.models.text import prompt_ids
from clmedit.models.tiny import tiny_model
from clmedit.run.settings import RunConfig
from tests.conftest import make_case


def test_resolve_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) is torch.float32 and resolve_dtype(None, cpu) is torch.float32
    assert resolve_dtype("auto", cuda) == "auto"  # the checkpoint's own dtype
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16 and resolve_dtype(torch.float16, cuda) is torch.float16
    with pytest.raises(InputError, match="unknown dtype 'fp8'; choose one of auto, float32"):
        resolve_dtype("fp8", cpu)
    with pytest.raises(ValidationError):
        RunConfig(data="x.jsonl", out="o", dtype="fp8")


def test_load_model_in_the_requested_dtype(tmp_path):
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for spec, want in (("auto", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        loaded, _ = load_model(str(tmp_path), device="cpu", dtype=spec)
        assert {p.dtype for p in loaded.parameters()} == {want}


def test_ft_trains_a_float32_master_in_a_bfloat16_model(cases):
    model, tok = tiny_model("llama")
    model.to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    edited = "model.layers.3.mlp.down_proj.weight"
    # each Adam step (5e-5) is below one bf16 step of most weights: only a float32 master accumulates them
    editor = get_editor("ft", layers=[21], num_steps=10, lr=5e-5, norm_constraint=1e-4)
    result = editor.apply(model, tok, cases)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {edited}
    weight = model.get_parameter(edited)
    assert weight.dtype is torch.bfloat16
    change = (weight.float() - before[edited].float()).abs()
    assert change.max().item() > 0 and (change > 0).float().mean() > 0.05
    assert change.max().item() <= 1e-4  # the box, measured in float32 against the original weight
    result.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("name", editor_names())
def test_every_editor_edits_and_restores_a_bfloat16_model(name):
    """dtype flows through every editor: no float32 tensor meets a bf16 one unconverted."""
    model, tok = tiny_model("llama")
    model.to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tiny = preset_path(editor_class(name).name, "tiny")
    editor = get_editor(name, preset=str(tiny)) if tiny.is_file() else get_editor(name)
    if editor.trainable:
        editor.fit(model, tok, [make_case(i) for i in range(2, 6)])
    case = make_case(0)
    ids = torch.tensor([prompt_ids(tok, case.prompt)])
    unedited = model(input_ids=ids).logits
    result = editor.apply(model, tok, [case])
    edited = model(input_ids=ids).logits
    assert edited.dtype is torch.bfloat16
    assert torch.equal(edited, unedited) == (name == "none")
    result.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
