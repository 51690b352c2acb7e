"""Hparams: presets, the study's YAML, overrides, layer rescaling, and the editor registry."""

import pytest
import torch
from pydantic import Field, ValidationError

from clmedit.config import EditorHParams, load_hparams, preset_for_model
from clmedit.editors.base import EditResult, backup_weights, editor_class, editor_names, get_editor
from clmedit.errors import InputError
from tests.conftest import make_case


class Demo(EditorHParams):
    layer: int = Field(21, description="edited layer")
    lr: float = 5e-4

    @classmethod
    def from_study(cls, raw):
        return cls(layer=raw["layers"][0], lr=raw["lr"])


def test_layers_rescale_to_model_depth():
    hp = Demo()
    assert hp.layer_for(hp.layer, 32) == 21
    assert hp.layer_for(hp.layer, 30) == 20
    assert Demo(reference_layers=30, layer=25).layer_for(25, 30) == 25


def test_frozen_and_validated():
    hp = Demo()
    with pytest.raises(ValidationError):
        hp.lr = 1.0
    with pytest.raises(ValidationError):
        Demo(unknown=1)


def test_yaml_ours_and_the_studys(tmp_path):
    ours = Demo(layer=3).to_yaml(tmp_path / "ours.yaml")
    assert Demo.from_yaml(ours) == Demo(layer=3)
    study = tmp_path / "study.yaml"
    study.write_text("layers: [21]\nlr: 0.0005\nnum_steps: 25\nnorm_constraint: 0.0001\n")
    assert Demo.from_yaml(study) == Demo(layer=21, lr=5e-4)
    assert Demo.from_yaml(study, lr=1.0).lr == 1.0
    with pytest.raises(FileNotFoundError):
        Demo.from_yaml(tmp_path / "nope.yaml")


def test_preset_lookup():
    assert preset_for_model("smollm2-135m") == "smollm2-135m"
    assert preset_for_model("codellama/CodeLlama-7b-hf") == "codellama-7b"
    assert preset_for_model("/models/stable-code-3b/") == "stable-code-3b"
    assert preset_for_model("gpt2") is None
    with pytest.raises(ValueError, match="no preset"):
        load_hparams(Demo, "demo", "not-a-model")
    assert load_hparams(Demo, "demo", None, lr=2.0).lr == 2.0


def test_registry_is_lazy_and_names_are_clear():
    assert "none" in editor_names() and "grace" in editor_names()
    assert editor_class("none").name == "none"
    with pytest.raises(InputError, match="unknown editor 'nope'"):
        get_editor("nope")


def test_none_editor_and_backup_restore_are_exact(llama_tiny):
    model, tok = llama_tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = get_editor("none").apply(model, tok, [make_case(0)])
    assert isinstance(result, EditResult) and result.seconds >= 0
    param = dict(model.named_parameters())["model.layers.1.mlp.down_proj.weight"]
    undo = backup_weights({"w": param})
    with torch.no_grad():
        param.add_(torch.randn_like(param) * 1e-3)
    EditResult(undo=[undo]).restore()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
