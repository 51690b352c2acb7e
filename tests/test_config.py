"""Hparams: presets, the study's YAML, validated overrides, layer rescaling, and the editor registry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import Field, ValidationError

from clmedit.config import PRESETS_DIR, EditorHParams, load_hparams, preset_for_model
from clmedit.editors.base import EditResult, backup_weights, editor_class, get_editor
from clmedit.errors import InputError
from tests.conftest import make_case


class Demo(EditorHParams):
    STUDY_KEYS = frozenset({"layers", "lr", "num_steps", "norm_constraint"})

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
    with pytest.raises(InputError, match="no preset"):
        load_hparams(Demo, "demo", "not-a-model")
    assert load_hparams(Demo, "demo", None, lr=2.0).lr == 2.0


def test_unknown_editor_names_the_known_ones():
    assert editor_class("FT-L").name == "ft"  # aliases, any case
    with pytest.raises(InputError, match="unknown editor 'nope'.*grace"):
        get_editor("nope")


def test_registry_listing_cli_editors_and_report_import_no_torch_and_no_editor():
    code = (
        "import sys\n"
        "from clmedit.editors.registry import editor_names, editor_label\n"
        "import clmedit.report.tables, clmedit.report.figures\n"
        "from typer.testing import CliRunner\n"
        "from clmedit.cli import app\n"
        "assert 'grace' in CliRunner().invoke(app, ['editors']).output.split()\n"
        "assert 'grace' in editor_names() and editor_label('agrace') == 'A-GRACE'\n"
        "heavy = [m for m in sys.modules if m == 'torch' or m.startswith('clmedit.editors.') "
        "and m != 'clmedit.editors.registry']\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_overrides_are_validated_and_name_the_valid_keys():
    with pytest.raises(InputError, match=r"'n_itr'.*valid keys:.*n_iter"):
        get_editor("grace", n_itr=5)
    with pytest.raises(InputError, match="n_iter"):
        get_editor("grace", n_iter=0)  # must be >= 1
    hp = get_editor("grace", n_iter=5).hparams
    assert hp.override(eps=2.0) == get_editor("grace", n_iter=5, eps=2.0).hparams
    with pytest.raises(InputError, match="'epss'"):
        hp.override(epss=2.0)


@pytest.mark.parametrize("name", ["malmen", "agrace"])
def test_fit_arguments_are_validated(name, llama_tiny):
    model, tok = llama_tiny
    with pytest.raises(InputError, match="'stepz'"):
        get_editor(name).fit(model, tok, [make_case(i) for i in range(4)], stepz=3)


def test_unknown_key_in_a_preset_file_is_rejected_in_both_formats(tmp_path):
    ours = tmp_path / "ours.yaml"
    ours.write_text("layer: 3\nlrr: 0.1\n")
    with pytest.raises(InputError, match=r"'lrr'.*valid keys: layer, lr"):
        Demo.from_yaml(ours)
    study = tmp_path / "study.yaml"
    study.write_text("alg_name: FT\nlayers: [21]\nlr: 0.0005\nnum_stepz: 25\n")
    with pytest.raises(InputError, match="'num_stepz'"):
        Demo.from_yaml(study)
    grace_study = tmp_path / "grace.yaml"
    grace_study.write_text(
        "alg_name: GRACE\ninner_params: [model.layers.27.mlp.down_proj.weight]\nn_iters: 3\n"
    )
    with pytest.raises(InputError, match="'n_iters'"):
        get_editor("grace", preset=str(grace_study))
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer: [1\n")
    with pytest.raises(InputError, match="not valid YAML"):
        Demo.from_yaml(bad)


def test_every_preset_loads_the_hparams_it_held_before_presets_were_trimmed():
    """tests/data/preset_hparams.json: every preset's full hparams, recorded before the presets
    were cut down to what differs from the defaults. Change it only with a preset or a default."""
    expected = json.loads((Path(__file__).parent / "data" / "preset_hparams.json").read_text())
    files = sorted(PRESETS_DIR.glob("*/*.yaml"))
    assert {f"{f.parent.name}/{f.stem}" for f in files} == set(expected)
    for f in files:
        cls = editor_class(f.parent.name).HParams
        assert cls.from_yaml(f).model_dump(mode="json") == expected[f"{f.parent.name}/{f.stem}"], f
        defaults = cls().model_dump(mode="json")
        raw = yaml.safe_load(f.read_text()) or {}
        same = sorted(k for k, v in raw.items() if defaults.get(k) == v)
        assert not same, f"{f} repeats class defaults: {same}"


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


@pytest.mark.parametrize("depth", [24, 28, 30, 40])
def test_layer_sets_keep_their_shape_at_any_depth(depth):
    """MEMIT/PMET: five consecutive layers; MALMEN: the last five; single layers by proportion."""
    for name in ("memit", "pmet"):
        layers = get_editor(name).hparams.layers_for([4, 5, 6, 7, 8], depth)
        start = round(4 * depth / 32)
        assert layers == list(range(start, start + 5)), (name, depth, layers)
    malmen = get_editor("malmen").hparams
    assert malmen.layers_for(malmen.layers, depth) == list(range(depth - 5, depth))
    ft = get_editor("ft").hparams
    assert ft.layers_for(ft.layers, depth) == [round(21 * depth / 32)]


def test_layer_sets_on_shallow_models_and_from_the_top():
    hp = Demo()
    assert hp.layers_for([27, 28, 29, 30, 31], 4) == [0, 1, 2, 3]  # "last 5" of 4 layers: all of them
    assert hp.layers_for([-5, -4, -3, -2, -1], 28) == [23, 24, 25, 26, 27]
    assert hp.layers_for([30, 31], 40) == [38, 39]
    assert hp.layers_for([3, 9], 16) == [2, 4]  # not a run: index by index


@pytest.mark.parametrize("bad", [{"layer": 32}, {"layer": -33}, {"reference_layers": 30, "layer": 30}])
def test_out_of_range_layers_are_rejected_not_clamped(bad, tmp_path):
    with pytest.raises(ValidationError, match="out of range"):
        Demo(**bad)
    preset = tmp_path / "p.yaml"
    preset.write_text("layers: [4, 5, 6, 7, 40]\n")
    with pytest.raises(InputError, match="layer 40 is out of range for 32 layers"):
        load_hparams(editor_class("memit").HParams, "memit", str(preset))
    with pytest.raises(InputError, match="layer 32 is out of range"):
        get_editor("ft", layers=[32])
