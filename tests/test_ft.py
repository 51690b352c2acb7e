"""FT-L: the L-inf constraint holds, only the chosen down_proj moves, restore is exact, study YAML."""

from __future__ import annotations

import torch
import yaml

from clmedit.editors.base import get_editor
from clmedit.editors.ft import FineTuneHParams


def test_norm_constraint_and_exact_restore(llama_tiny, cases):
    model, tok = llama_tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = get_editor("ft-l", layers=[21], num_steps=5, lr=1e-2, norm_constraint=1e-3).apply(
        model, tok, cases
    )
    assert result.info["layers"] == [3] and len(result.info["losses"]) == 5
    edited = "model.layers.3.mlp.down_proj.weight"
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {edited}
    delta = (model.get_parameter(edited) - before[edited]).abs().max().item()
    assert 0 < delta <= 1e-3 + 1e-7
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    result.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_unconstrained_loss_decreases_over_batches(llama_tiny, cases):
    model, tok = llama_tiny
    editor = get_editor("ft", layers=[8, 21], num_steps=10, lr=1e-2, norm_constraint=None, batch_size=2)
    result = editor.apply(model, tok, cases)  # two batches per step, two layers
    losses = result.info["losses"]
    assert result.info["layers"] == [1, 3] and losses[-1] < losses[0]
    result.restore()


def test_from_study_yaml(tmp_path):
    raw = {
        "alg_name": "FT",
        "model_name": "Qwen/CodeQwen1.5-7B",
        "layers": [21],
        "num_steps": 40,
        "lr": 5e-4,
        "weight_decay": 0,
        "norm_constraint": 1e-4,
        "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
        "objective_optimization": "target_new",
        "batch_size": 1,
    }
    path = tmp_path / "codeqwen.yaml"
    path.write_text(yaml.safe_dump(raw))
    hp = FineTuneHParams.from_yaml(path)
    assert (hp.layers, hp.num_steps, hp.lr, hp.norm_constraint, hp.batch_size) == ([21], 40, 5e-4, 1e-4, 1)
    assert get_editor("ft", preset="smollm2-135m").hparams.layers_for([20], 30) == [20]
