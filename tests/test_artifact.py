"""Fix files trust nothing: every tensor declared and hashed, the base model checked, scope enforced."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from clmedit.config import preset_path
from clmedit.editors.base import get_editor
from clmedit.errors import IntegrityError
from clmedit.fixes.artifact import load_artifact, load_edited, save_artifact
from clmedit.fixes.manifest import EDIT_FILE, tensor_sha256
from clmedit.models.fingerprint import fingerprint
from clmedit.models.tiny import tiny_model
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


def _retensor(art, change):
    """Rewrite the edit's tensors with `change(name, tensor)` and re-declare them (hashes that match)."""
    weights = load_file(str(art / EDIT_FILE))
    weights = {k: change(k, v) for k, v in weights.items()}
    save_file(weights, str(art / EDIT_FILE))
    m = _manifest(art)
    for k, v in weights.items():
        m["edit"]["tensors"][k] = {"shape": list(v.shape), "dtype": str(v.dtype)[6:], "sha256": tensor_sha256(v)}
    _write_manifest(art, m)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["ft", "grace"])
def test_non_finite_values_are_refused_even_with_matching_hashes(fix_files, tmp_path, name, bad):
    art = _copy(fix_files[0] / name, tmp_path / "a")
    _retensor(art, lambda k, v: v.flatten().index_fill(0, torch.tensor([0]), bad).view_as(v) if v.is_floating_point() else v)
    _refused(art, "NaN or Inf")


def test_declared_shape_is_checked_against_the_header_before_reading(fix_files, tmp_path):
    art = _copy(fix_files[0] / "ft", tmp_path / "a")
    m = _manifest(art)
    decl = next(iter(m["edit"]["tensors"].values()))
    decl["shape"] = [10**12, 10**12]  # reading this would allocate 4 zettabytes
    _write_manifest(art, m)
    _refused(art, "in the file but declared")


@pytest.mark.parametrize(
    "field, value, match",
    [("hparams", None, "'hparams' is null, not an object"), ("editor", 3, "'editor' is 3, not a string"),
     ("fixes", "2", "'fixes' is \"2\", not an integer")],
)  # fmt: skip
def test_manifest_fields_of_the_wrong_type_are_named(fix_files, tmp_path, field, value, match):
    art = _copy(fix_files[0] / "grace", tmp_path / "a")
    _write_manifest(art, {**_manifest(art), field: value})
    _refused(art, match)


def test_a_layer_given_as_a_string_is_named(fix_files, tmp_path):
    art = _copy(fix_files[0] / "grace", tmp_path / "a")
    m = _manifest(art)
    m["edit"]["meta"]["layer"] = str(m["edit"]["meta"]["layer"])
    _write_manifest(art, m)
    _refused(art, "meta 'layer' is \"3\", not an integer")


def test_only_regular_files_inside_the_fix_file_are_read(fix_files, tmp_path):
    import os
    import threading

    art = _copy(fix_files[0] / "ft", tmp_path / "a")
    fifo = art / EDIT_FILE
    fifo.unlink()
    os.mkfifo(fifo)
    # a writer that sends nothing: a loader that opened the FIFO gets an empty stream, not a hang
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
    writer.start()
    try:
        _refused(art, "not a regular file")
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # releases the writer if nothing read
        writer.join(5)
    outside = _copy(fix_files[0] / "ft", tmp_path / "elsewhere")
    fifo.unlink()
    (art / EDIT_FILE).symlink_to(outside / EDIT_FILE)  # a link leaving the folder, to a valid edit
    _refused(art, "links outside")
