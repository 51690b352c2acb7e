"""Fix files: apply a list of fixes, save the whole edit, load it anywhere without training.

A fix file is a directory holding
    manifest.json     format 3; the base model's id and fingerprints; the editor and its hparams
                      (without local folders, `EditorHParams.portable`); the edit's meta (JSON) and
                      every tensor of edit.safetensors (name -> shape, dtype, sha256)
    edit.safetensors  the edit as tensors (`Editor.edit_state`): for weight editors the new values
                      (not deltas) of the parameters the editor may change; for the GRACE family the
                      codebook (keys, radii, padded values + step counts; labels in meta) and any
                      key encoder (SCOPE: also its bank); for WISE the side memory's buffers
    fixes.jsonl       the fixes as edit cases (provenance: what to re-create the edit from)

Loading (`load_edited`, `load_artifact`) rebuilds the edit from the saved state alone through
`Editor.load_edit`: it never applies, fits or trains. A fix file is untrusted input: loading
refuses (IntegrityError) before the model changes when the manifest has no base fingerprint or
another model's, when the file holds a tensor the manifest does not declare, or one whose shape,
dtype or hash differs (names, shapes and dtypes are checked against the file's header before any
tensor is read), when a tensor holds NaN or Inf (but a scalar +inf, a threshold not set yet), when a part is not a regular file (a FIFO, a device,
a link leaving the folder) or when the manifest's fields have the wrong types; the editor then refuses any tensor outside its edit (parameters other than
the down projections of its layers, codebook or memory parts it does not have, widths that do not
fit this model), and a refused load leaves the model bitwise as it was. Format 2 files (which
replayed the fixes) are refused with the command that re-creates them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from clmedit.data.schema import EditCase, write_cases
from clmedit.editors.base import Editor, EditResult, EditState, editor_class, undone_on_error
from clmedit.errors import InputError, IntegrityError, NotSavableError
from clmedit.files import atomic_save_tensors, atomic_write_text, regular_file
from clmedit.models.fingerprint import fingerprint, fingerprint_diff, model_fingerprint

log = logging.getLogger(__name__)
FORMAT = 3  # 3: the edit's own state, loaded without training; 2 replayed the fixes; 1 had no hashes
EDIT_FILE, MANIFEST = "edit.safetensors", "manifest.json"
FIX_FILES = (EDIT_FILE, MANIFEST, "fixes.jsonl")  # what `save_artifact` writes into its folder
# safetensors' header names of the dtypes an edit holds -> torch's names (as the manifest declares them)
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # fmt: skip


def is_fix_file(directory: str | Path) -> bool:
    """True when `directory` holds a manifest clmedit wrote (so `apply --out` may replace it)."""
    try:
        return "format" in json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _finite(t: torch.Tensor) -> bool:
    """No NaN anywhere, no Inf in a tensor of values (a scalar +inf is a threshold's "none yet", WISE's)."""
    if not t.is_floating_point():
        return True
    return not bool(torch.isnan(t).any()) and (t.dim() == 0 and bool(t > 0) or bool(torch.isfinite(t).all()))


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (any dtype)."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(raw)).hexdigest()


def _declare(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "sha256": tensor_sha256(v)}
        for k, v in sorted(tensors.items())
    }


def _check_covered(model: torch.nn.Module, before: dict[str, str], editor: Editor, state: EditState) -> None:
    """Refuse to save an edit its state does not hold whole: a parameter changed in place that the
    state leaves out, or a wrapped module from an editor that keeps the weight default."""
    after = fingerprint(model)
    changed = fingerprint_diff(before, after)
    params = [k for k in changed if not k.startswith("module:") and k in before and k in after]
    missing = [k for k in params if k not in state.tensors]
    if missing:
        raise NotSavableError(
            f"{editor.name} changed {missing[:5]} but its edit_state does not hold them; "
            "its edit cannot be saved (make edited_parameters or edit_state cover them)"
        )
    wrapped = [k.removeprefix("module:") for k in changed if k.startswith("module:") and k in before]
    if wrapped and type(editor).edit_state is Editor.edit_state:
        raise NotSavableError(
            f"{editor.name} wraps {wrapped[:3]} but keeps the weight editors' edit_state; implement "
            "edit_state and _load_edit for its wrapper so its edit can be saved"
        )


@dataclass(frozen=True)
class BaseModelRecord:
    """What a fix file records of its unedited base model; take it before the first edit."""

    model_id: str
    fingerprint: str  # weights + tokenizer + config (`model_fingerprint(model, tok)`)
    weights_fingerprint: str  # weights alone, for loads without a tokenizer
    tensors: dict[str, str]  # per-tensor checksums (`models.fingerprint.fingerprint`): what an edit changed

    @classmethod
    def of(cls, model, tok, model_id: str) -> BaseModelRecord:
        return cls(model_id, model_fingerprint(model, tok), model_fingerprint(model), fingerprint(model))


def save_artifact(model, tok, editor: Editor, fixes: list[EditCase], out: str | Path, model_id: str) -> Path:
    """Apply `fixes` with `editor` (one apply call) and save the whole edit; the model stays edited.

    `model` must be the unedited base model (its fingerprints are recorded). If saving fails, the
    edit is restored and the error propagates.
    """
    base = BaseModelRecord.of(model, tok, model_id)
    result = editor.apply(model, tok, fixes)
    with undone_on_error(result):
        write_fix_file(
            model, editor, fixes, out, base, apply_seconds=result.seconds, peak_bytes=result.peak_bytes
        )
    return Path(out)


def write_fix_file(model, editor: Editor, fixes: list[EditCase], out: str | Path, base: BaseModelRecord,
                   check: bool = True, **cost: float) -> Path:  # fmt: skip
    """Save the edit `editor` has made in `model` (every apply not restored), made from `fixes`, as
    the fix file `out`; nothing is applied and the model is not changed. `check`: refuse an edit
    its state does not hold whole (one read of every weight; an editor that passed once on this
    model may skip it). `cost`: apply_seconds, peak_bytes. Each file is replaced atomically and the
    manifest last: it declares the hashes of the other two, so a reader sees the new fix file
    whole, or one that refuses to load."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = editor.edit_state(model)
    if check:
        _check_covered(model, base.tensors, editor, state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
    bad = [k for k, v in tensors.items() if not _finite(v)]
    if bad:
        raise NotSavableError(f"{editor.name}: the edit holds NaN or Inf values in {bad[:5]}; nothing was saved")
    try:
        meta = json.loads(json.dumps(state.meta))
    except (TypeError, ValueError) as err:
        raise NotSavableError(f"{editor.name}: its edit_state meta is not JSON ({err})") from None
    atomic_save_tensors(out / EDIT_FILE, tensors)
    write_cases(out / "fixes.jsonl", fixes)
    manifest: dict[str, Any] = {
        "format": FORMAT, "model": base.model_id, "base_fingerprint": base.fingerprint,
        "base_weights_fingerprint": base.weights_fingerprint, "editor": editor.name,
        "hparams": editor.hparams.portable(),
        "edit": {"meta": meta, "tensors": _declare(tensors)},
        "fixes": len(fixes), "fixes_sha256": hashlib.sha256((out / "fixes.jsonl").read_bytes()).hexdigest(),
        "apply_seconds": cost.get("apply_seconds"), "peak_bytes": cost.get("peak_bytes"),
    }  # fmt: skip
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    log.info("saved a %s edit of %d fix(es) (%d tensors) to %s", editor.name, len(fixes), len(tensors), out)
    return out


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a fix file (or of an exported adapter), checked for format and completeness."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(f"{directory} is not a clmedit fix file (no {MANIFEST})")
    try:
        manifest = json.loads(_part(mpath, directory).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{mpath} is not valid JSON ({err}); re-create the fix file") from err
    got = manifest.get("format") if isinstance(manifest, dict) else None
    if got != FORMAT:
        editor = manifest.get("editor", "EDITOR") if isinstance(manifest, dict) else "EDITOR"
        raise IntegrityError(
            f"{directory}: fix file format {got!r} is not supported (this clmedit reads format {FORMAT}, "
            f"which loads without training); re-create it with `clmedit apply --editor {editor} --fixes "
            f"{directory / 'fixes.jsonl'} --out NEW_DIR` (add --trained DIR for a trained editor)"
        )
    if not isinstance(manifest.get("base_fingerprint"), str):
        raise IntegrityError(f"{directory}: the manifest has no base model fingerprint; refusing to load it")
    edit = manifest.get("edit")
    if (
        not isinstance(edit, dict)
        or not isinstance(edit.get("tensors"), dict)
        or not isinstance(edit.get("meta"), dict)
    ):
        raise IntegrityError(f"{directory}: the manifest does not declare the edit's tensors and meta")
    _check_fields(directory, manifest)
    return manifest


def _part(path: Path, directory: Path) -> Path:
    """`path` if it is a regular file inside the fix file's folder (a FIFO would block, a device never end)."""
    try:
        return regular_file(path, "fix-file part", inside=directory)
    except InputError as err:
        raise IntegrityError(f"{err}; refusing to load this fix file") from None


def _check_fields(directory: Path, manifest: dict[str, Any]) -> None:
    """Every field loading reads has the type it must have, so a tampered value is named, not a crash."""
    expected = {"editor": str, "model": str, "hparams": dict, "fixes": int}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise IntegrityError(
                f"{directory}: the manifest's {key!r} is {json.dumps(manifest.get(key))}, not {_KIND[kind]}; "
                "the fix file was altered or damaged; re-create it"
            )
    for name, decl in manifest["edit"]["tensors"].items():
        shape = decl.get("shape") if isinstance(decl, dict) else None
        ok = isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        if not ok or decl.get("dtype") not in _DTYPES.values() or not isinstance(decl.get("sha256"), str):
            raise IntegrityError(f"{directory}: the manifest's declaration of tensor {name!r} is malformed ({decl!r})")


_KIND = {str: "a string", dict: "an object", int: "an integer"}


def _read_declared(path: Path, declared: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of `path`, each checked against its declaration (name, shape, dtype, sha256), the
    header's shapes and dtypes before any tensor is read, the values after (no NaN or Inf)."""
    _part(path, path.parent)
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            extra, missing = sorted(names - set(declared)), sorted(set(declared) - names)
            if extra or missing:
                raise IntegrityError(
                    f"{path}: tensors not declared in the manifest {extra[:5]}, declared but absent "
                    f"{missing[:5]}; refusing to load this fix file"
                )
            for k in sorted(names):
                head, want = fh.get_slice(k), declared[k]
                if list(head.get_shape()) != want["shape"] or _DTYPES.get(head.get_dtype()) != want["dtype"]:
                    raise IntegrityError(
                        f"{path}: tensor {k!r} is {head.get_dtype()} {head.get_shape()} in the file but declared "
                        f"{declared[k]['dtype']} {declared[k]['shape']}; the fix file was altered or damaged"
                    )
            tensors = {k: fh.get_tensor(k) for k in sorted(names)}
    except IntegrityError:
        raise
    except Exception as err:  # missing or unreadable file
        raise IntegrityError(f"{path} cannot be read as safetensors ({err}); re-create the fix file") from err
    for k, v in tensors.items():
        if _declare({k: v})[k] != declared[k]:
            raise IntegrityError(
                f"{path}: tensor {k!r} does not match its declaration in the manifest (shape, dtype or "
                f"sha256 differ); the fix file was altered or damaged"
            )
        if not _finite(v):
            raise IntegrityError(f"{path}: tensor {k!r} holds NaN or Inf values; refusing to load this fix file")
    return tensors


def editor_for(manifest: dict[str, Any]) -> Editor:
    """The editor a manifest names, built from its (portable) hparams: nothing is trained or read."""
    try:
        cls = editor_class(manifest["editor"])
        return cls(cls.HParams.build(manifest["hparams"], "the fix file's hparams"))
    except Exception as err:
        raise IntegrityError(f"the fix file's editor/hparams are not valid here: {err}") from err


def _check_meta(directory: Path, meta: dict[str, Any], editor: Editor) -> None:
    """A meta value named like an integer hparam of the editor (the layer it edits) is an integer."""
    for key, value in meta.items():
        want = getattr(editor.hparams, key, None)
        if isinstance(want, int) and not isinstance(want, bool) and (type(value) is not int):
            raise IntegrityError(
                f"{directory}: the edit's meta {key!r} is {json.dumps(value)}, not an integer like "
                f"{editor.name}'s {key} ({want}); the fix file was altered or damaged"
            )


def load_edited(model, directory: str | Path, tok: Any = None) -> EditResult:
    """Put the edit saved in `directory` (a fix file or an exported adapter) into `model`.

    `model` must be the unedited base model the fix was made for: its fingerprint is checked
    (with `tok`, the tokenizer's too). No training happens. Returns the EditResult (`restore()`
    takes the edit out); `info["manifest"]` is the manifest, `info["editor"]` the editor, which
    can keep editing the loaded edit.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    want = manifest["base_fingerprint"] if tok is not None else manifest.get("base_weights_fingerprint")
    here = model_fingerprint(model, tok) if tok is not None else model_fingerprint(model)
    if want != here:
        raise IntegrityError(
            f"{directory} was made for another base model ({manifest.get('model')!r}, fingerprint "
            f"{want}) than the one given (fingerprint {here}); load it into the unedited model it was made for"
        )
    tensors = _read_declared(directory / EDIT_FILE, manifest["edit"]["tensors"])
    editor = editor_for(manifest)
    _check_meta(directory, manifest["edit"]["meta"], editor)
    try:
        result = editor.load_edit(model, tok, EditState(tensors, manifest["edit"]["meta"]))
    except IntegrityError as err:
        raise IntegrityError(f"{directory}: {err}; refusing to load it") from None
    result.info.update(manifest=manifest, editor=editor)
    return result


def load_artifact(model, tok, directory: str | Path) -> dict[str, Any]:
    """`load_edited` for the CLI: put the saved edit into `model`; returns the manifest."""
    return load_edited(model, directory, tok).info["manifest"]
