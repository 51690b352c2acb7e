"""Fix files trust nothing: every tensor declared and hashed, the base model checked, scope enforced."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from clmedit.config import preset_path
from clmedit.editors.base import get_editor
from clmedit.errors import IntegrityError
from clmedit.models.tiny import tiny_model
from clmedit.run.artifact import EDIT_FILE, load_artifact, load_edited, save_artifact, tensor_sha256
from clmedit.run.records import fingerprint
from tests.conftest import greedy_ids, make_case

NORM = "model.norm.weight"


@pytest.fixture(scope="module")
def fix_files(tmp_path_factory):
    """An FT-L fix file (edits parameters) and a GRACE one (wraps a module) of the tiny llama, with
    what each edited model generated for the fix's prompt."""
    root = tmp_path_factory.mktemp("art")
    fix = [make_case(0, target="sorted(xs)")]
    model, tok = tiny_model("llama")
    ft = get_editor("ft", num_steps=3, norm_constraint=None, lr=1e-2)
    save_artifact(model, tok, ft, fix, root / "ft", "tiny")
    edited_ft = fingerprint(model)
    model, tok = tiny_model("llama")
    save_artifact(
        model, tok, get_editor("grace", preset=str(preset_path("grace", "tiny"))), fix, root / "grace", "tiny"
    )
    return root, edited_ft, greedy_ids(model, tok, fix[0].prompt, 6)


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d, m):
    (d / "manifest.json").write_text(json.dumps(m))


def _declare(m, name, t):
    m["edit"]["tensors"][name] = {"shape": list(t.shape), "dtype": "float32", "sha256": tensor_sha256(t)}


def _refused(art, match):
    """Loading `art` into a fresh tiny llama raises IntegrityError matching `match`; the model is untouched."""
    model, tok = tiny_model("llama")
    before = fingerprint(model)
    tree = [type(m).__name__ for m in model.modules()]
    with pytest.raises(IntegrityError, match=match):
        load_artifact(model, tok, art)
    assert fingerprint(model) == before and [type(m).__name__ for m in model.modules()] == tree


def test_round_trip_loads_the_exact_edit(fix_files):
    root, edited_ft, grace_ids = fix_files
    assert set(_manifest(root / "ft")["edit"]["tensors"]) == {"model.layers.3.mlp.down_proj.weight"}
    model, tok = tiny_model("llama")
    load_artifact(model, tok, root / "ft")
    assert fingerprint(model) == edited_ft
    model, tok = tiny_model("llama")
    result = load_edited(model, root / "grace")  # no tokenizer: the weights-only fingerprint is checked
    assert greedy_ids(model, tok, make_case(0).prompt, 6) == grace_ids
    assert result.info["manifest"]["editor"] == "grace"
    result.restore()
    assert fingerprint(model) == fingerprint(tiny_model("llama")[0])


def test_undeclared_tensor_is_refused(fix_files, tmp_path):
    art = _copy(fix_files[0] / "ft", tmp_path / "a")
    weights = load_file(str(art / EDIT_FILE))
    weights[NORM] = torch.full((64,), 1000.0)
    save_file(weights, str(art / EDIT_FILE))
    _refused(art, "not declared")


def test_hash_mismatch_is_refused(fix_files, tmp_path):
    art = _copy(fix_files[0] / "ft", tmp_path / "a")
    weights = load_file(str(art / EDIT_FILE))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(art / EDIT_FILE))
    _refused(art, "altered")


def test_missing_fingerprint_is_refused_even_with_consistent_hashes(fix_files, tmp_path):
    art = _copy(fix_files[0] / "ft", tmp_path / "a")
    m = _manifest(art)
    del m["base_fingerprint"]
    _write_manifest(art, m)
    _refused(art, "fingerprint")


@pytest.mark.parametrize("name", ["ft", "grace"])
def test_fix_for_another_base_model_is_refused(fix_files, name):
    for tok_given in (True, False):
        model, tok = tiny_model("llama", seed=1)  # same shapes, other weights
        before = fingerprint(model)
        with pytest.raises(IntegrityError, match="another base model"):
            load_edited(model, fix_files[0] / name, tok if tok_given else None)
        assert fingerprint(model) == before


def test_declared_parameter_outside_the_editors_scope_is_refused(fix_files, tmp_path):
    """Even declared with a correct hash, a parameter the editor does not edit (the final norm) is refused."""
    art = _copy(fix_files[0] / "ft", tmp_path / "a")
    weights = load_file(str(art / EDIT_FILE))
    weights[NORM] = torch.full((64,), 1000.0)
    save_file(weights, str(art / EDIT_FILE))
    m = _manifest(art)
    _declare(m, NORM, weights[NORM])
    _write_manifest(art, m)
    _refused(art, "does not edit")


def test_tensor_outside_the_wrapped_edit_is_refused(fix_files, tmp_path):
    """A GRACE fix file setting the final norm, declared and hashed, is refused; the model stays clean."""
    art = _copy(fix_files[0] / "grace", tmp_path / "a")
    state = load_file(str(art / EDIT_FILE))
    state[NORM] = torch.full((64,), 1000.0)
    save_file(state, str(art / EDIT_FILE))
    m = _manifest(art)
    _declare(m, NORM, state[NORM])
    _write_manifest(art, m)
    _refused(art, "not part of a grace edit")


def test_codebook_of_another_width_is_refused(fix_files, tmp_path):
    art = _copy(fix_files[0] / "grace", tmp_path / "a")
    state = load_file(str(art / EDIT_FILE))
    state["codebook.keys"] = torch.zeros(state["codebook.keys"].shape[0], 7)
    save_file(state, str(art / EDIT_FILE))
    m = _manifest(art)
    _declare(m, "codebook.keys", state["codebook.keys"])
    _write_manifest(art, m)
    _refused(art, "wide")


@pytest.mark.parametrize("old", [1, 2])
def test_older_formats_are_refused_with_a_way_out(fix_files, tmp_path, old):
    art = _copy(fix_files[0] / "grace", tmp_path / "a")
    m = _manifest(art)
    m["format"] = old
    _write_manifest(art, m)
    _refused(art, "re-create it with `clmedit apply --editor grace --fixes")
