"""Fix files: apply a list of fixes, save the whole edit, load it anywhere without training.

A fix file is a directory holding
    manifest.json     format 3; the base model's id and fingerprints; the editor and its hparams
                      (without local folders, `EditorHParams.portable`); the edit's meta (JSON) and
                      every tensor of edit.safetensors (name -> shape, dtype, sha256)
    edit.safetensors  the edit as tensors (`Editor.edit_state`): for weight editors the new values
                      (not deltas) of the parameters the editor may change; for the GRACE family the
                      codebook (keys, radii, packed values + step counts; labels in meta) and any
                      key encoder (SCOPE: also its bank); for WISE the side memory's buffers
    fixes.jsonl       the fixes as edit cases (provenance: what to re-create the edit from)

Loading (`load_edited`, `load_artifact`) rebuilds the edit from the saved state alone through
`Editor.load_edit`: it never applies, fits or trains. A fix file is untrusted input (read and checked
in fixes/manifest.py): loading refuses (IntegrityError) before the model changes when the manifest has no base fingerprint or
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

from clmedit.data.schema import EditCase, write_cases
from clmedit.editors.base import Editor, EditResult, EditState, editor_class, undone_on_error
from clmedit.errors import IntegrityError, NotSavableError
from clmedit.files import atomic_save_tensors, atomic_write_text
from clmedit.fixes.manifest import EDIT_FILE, FORMAT, MANIFEST, declare, finite, read_declared, read_manifest
from clmedit.models.fingerprint import fingerprint, fingerprint_diff, model_fingerprint

log = logging.getLogger(__name__)


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
    bad = [k for k, v in tensors.items() if not finite(v)]
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
        "edit": {"meta": meta, "tensors": declare(tensors)},
        "fixes": len(fixes), "fixes_sha256": hashlib.sha256((out / "fixes.jsonl").read_bytes()).hexdigest(),
        "apply_seconds": cost.get("apply_seconds"), "peak_bytes": cost.get("peak_bytes"),
    }  # fmt: skip
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    log.info("saved a %s edit of %d fix(es) (%d tensors) to %s", editor.name, len(fixes), len(tensors), out)
    return out


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


def load_edited(model, directory: str | Path, tok: Any = None, editor: Editor | None = None) -> EditResult:
    """Put the edit saved in `directory` (a fix file or an exported adapter) into `model`.

    `model` must be the unedited base model the fix was made for: its fingerprint is checked
    (with `tok`, the tokenizer's too). No training happens. Returns the EditResult (`restore()`
    takes the edit out); `info["manifest"]` is the manifest, `info["editor"]` the editor, which
    can keep editing the loaded edit: `editor` when given (it must be of the kind that saved the
    edit; a sequential run resuming from a snapshot keeps its own editor), else one built from the
    manifest.
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
    tensors = read_declared(directory / EDIT_FILE, manifest["edit"]["tensors"])
    if editor is None:
        editor = editor_for(manifest)
    elif editor.name != manifest["editor"]:
        raise IntegrityError(f"{directory} holds a {manifest['editor']} edit, not one of {editor.name}")
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
