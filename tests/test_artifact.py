"""`apply --load` trusts nothing: every tensor declared and hashed, the base model checked, scope enforced."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from clmedit.editors.base import get_editor
from clmedit.errors import IntegrityError
from clmedit.models.tiny import tiny_model
from clmedit.run.artifact import load_artifact, save_artifact, tensor_sha256
from clmedit.run.records import fingerprint
from tests.conftest import make_case

NORM = "model.norm.weight"


@pytest.fixture(scope="module")
def ft_artifact(tmp_path_factory):
    """An FT-L artifact (edits parameters) and a GRACE one (wraps a module) of the tiny llama."""
    root = tmp_path_factory.mktemp("art")
    fix = [make_case(0, target="sorted(xs)")]
    model, tok = tiny_model("llama")
    ft = get_editor("ft", num_steps=3, norm_constraint=None, lr=1e-2)
    save_artifact(model, tok, ft, fix, root / "ft", "tiny")
    edited_ft = fingerprint(model)
    model, tok = tiny_model("llama")
    save_artifact(model, tok, get_editor("grace", n_iter=3), fix, root / "grace", "tiny")
    return root, edited_ft, fingerprint(model)


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d, m):
    (d / "manifest.json").write_text(json.dumps(m))


def _declare(m, file, name, t):
    m["tensors"][file][name] = {"shape": list(t.shape), "dtype": "float32", "sha256": tensor_sha256(t)}


def test_round_trip_loads_the_exact_edit(ft_artifact):
    root, edited_ft, edited_grace = ft_artifact
    assert _manifest(root / "ft")["tensors"]["weights.safetensors"]  # FT-L changed some parameters
    for name, want in (("ft", edited_ft), ("grace", edited_grace)):
        model, tok = tiny_model("llama")
        load_artifact(model, tok, root / name)
        assert fingerprint(model) == want


def test_undeclared_tensor_is_refused(ft_artifact, tmp_path):
    art = _copy(ft_artifact[0] / "ft", tmp_path / "a")
    weights = load_file(str(art / "weights.safetensors"))
    weights[NORM] = torch.full((64,), 1000.0)
    save_file(weights, str(art / "weights.safetensors"))
    model, tok = tiny_model("llama")
    before = fingerprint(model)
    with pytest.raises(IntegrityError, match="not declared"):
        load_artifact(model, tok, art)
    assert fingerprint(model) == before


def test_hash_mismatch_is_refused(ft_artifact, tmp_path):
    art = _copy(ft_artifact[0] / "ft", tmp_path / "a")
    weights = load_file(str(art / "weights.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(art / "weights.safetensors"))
    model, tok = tiny_model("llama")
    with pytest.raises(IntegrityError, match="altered"):
        load_artifact(model, tok, art)


def test_missing_fingerprint_is_refused_even_with_consistent_hashes(ft_artifact, tmp_path):
    art = _copy(ft_artifact[0] / "ft", tmp_path / "a")
    m = _manifest(art)
    del m["base_fingerprint"]
    _write_manifest(art, m)
    model, tok = tiny_model("llama")
    with pytest.raises(IntegrityError, match="fingerprint"):
        load_artifact(model, tok, art)


def test_fix_for_another_base_model_is_refused(ft_artifact):
    model, tok = tiny_model("llama", seed=1)  # same shapes, other weights
    before = fingerprint(model)
    with pytest.raises(IntegrityError, match="another base model"):
        load_artifact(model, tok, ft_artifact[0] / "ft")
    assert fingerprint(model) == before


def test_declared_parameter_outside_the_editors_scope_is_refused(ft_artifact, tmp_path):
    """Even declared with a correct hash, a parameter the editor does not edit (the final norm) is refused."""
    art = _copy(ft_artifact[0] / "ft", tmp_path / "a")
    weights = load_file(str(art / "weights.safetensors"))
    weights[NORM] = torch.full((64,), 1000.0)
    save_file(weights, str(art / "weights.safetensors"))
    m = _manifest(art)
    _declare(m, "weights.safetensors", NORM, weights[NORM])
    _write_manifest(art, m)
    model, tok = tiny_model("llama")
    with pytest.raises(IntegrityError, match="does not edit"):
        load_artifact(model, tok, art)


def test_module_state_outside_the_wrapped_modules_is_refused(ft_artifact, tmp_path):
    """modules.safetensors setting the final norm, declared and hashed, is refused; the model stays clean."""
    art = _copy(ft_artifact[0] / "grace", tmp_path / "a")
    state = load_file(str(art / "modules.safetensors"))
    bad = torch.full((64,), 1000.0)
    state["model.norm::weight"] = bad
    save_file(state, str(art / "modules.safetensors"))
    m = _manifest(art)
    _declare(m, "modules.safetensors", "model.norm::weight", bad)
    _write_manifest(art, m)
    model, tok = tiny_model("llama")
    before = fingerprint(model)
    with pytest.raises(IntegrityError, match="not state of a module"):
        load_artifact(model, tok, art)
    assert fingerprint(model) == before


def test_format_1_artifact_is_refused_with_a_way_out(ft_artifact, tmp_path):
    art = _copy(ft_artifact[0] / "ft", tmp_path / "a")
    m = _manifest(art)
    m["format"] = 1
    _write_manifest(art, m)
    model, tok = tiny_model("llama")
    with pytest.raises(IntegrityError, match="re-create it"):
        load_artifact(model, tok, art)
