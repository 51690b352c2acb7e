"""`clmedit apply` as library calls: make a fix file from a list of fixes, or open one, then generate.

Everything a user can get wrong (the fixes file, the output folder, the editor, its trained part,
the device) is checked before the model loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase, read_cases
from clmedit.editors.base import undone_on_error
from clmedit.errors import InputError, IntegrityError
from clmedit.files import regular_file
from clmedit.fixes.artifact import BaseModelRecord, load_artifact, load_edited, save_artifact, write_fix_file
from clmedit.fixes.cases import as_prompt, read_fixes
from clmedit.fixes.manifest import FIX_FILES, is_fix_file, read_manifest
from clmedit.outputs import check_output_dir
from clmedit.run.checks import check_device, check_out_dir
from clmedit.run.setup import load_model_for, make_editor


def fix_editor(name: str, model: str, preset: str | None = None, hparams: dict[str, Any] | None = None,
               trained: Path | None = None, message: str | None = None):  # fmt: skip
    """The editor fixes are made with (resolved as a run's), its trained part loaded from `trained`.

    A trainable editor with no trained part (neither `trained` nor a folder in its hparams) is an
    InputError: `message`, or one saying how to train it.
    """
    ed = make_editor(name, model, preset, hparams)
    if trained is not None:
        ed.load(trained)
    elif ed.trainable and not getattr(ed.hparams, ed.HParams.TRAINED_FROM or "", None):
        raise InputError(message or (
            f"--editor {ed.name} needs its trained part: give --trained DIR, a folder written by "
            f"`clmedit train --editor {ed.name} --out DIR`"
        ))  # fmt: skip
    return ed


def make_fix_file(model: str, editor: str, fixes: Path, out: str | Path, task: str = "cnle", *,
                  trained: Path | None = None, preset: str | None = None, hparams: dict[str, Any] | None = None,
                  device: str | None = None, dtype: str = "auto"):  # fmt: skip
    """Apply the fixes in `fixes` with `editor` to `model` and save the fix file `out`; returns the
    edited (model, tok)."""
    check_device(device)
    regular_file(fixes, "--fixes")
    out = check_output_dir(out, [fixes], FIX_FILES.__contains__, ours=is_fix_file)
    ed = fix_editor(editor, model, preset, hparams, trained)
    cases = read_fixes(fixes, task)
    check_out_dir(out)
    m, tok = load_model_for(model, device, dtype)
    save_artifact(m, tok, ed, cases, out, model)
    return m, tok


def extend_fix_file(load: Path, fixes: Path, out: str | Path, model: str, task: str = "cnle", *,
                    trained: Path | None = None, device: str | None = None, dtype: str = "auto"):  # fmt: skip
    """Add the fixes in `fixes` to the fix file `load` and save the whole edit, old fixes and new, as
    the new fix file `out`; returns the edited (model, tok). `load`'s edit is loaded, never re-applied,
    and the editor (with its hparams and any trained part the fix file carries) keeps editing it, so
    the cost is one load plus one apply of the new fixes. `load` is left as it was. `trained`: the
    trained part of an editor whose fix file does not carry it (MALMEN's hypernetwork). Returns
    (model, tok, fixes loaded, fixes added)."""
    manifest, old = _fixes_of(load)
    check_device(device)
    regular_file(fixes, "--fixes")
    out = check_output_dir(out, [fixes, load], FIX_FILES.__contains__, ours=is_fix_file)
    new = read_fixes(fixes, task, first=len(old))
    clash = sorted({c.case_id for c in old} & {c.case_id for c in new})
    if clash:
        raise InputError(f"--fixes {fixes}: fix id(s) {clash[:5]} are already in {load}; give new ids")
    check_out_dir(out)
    m, tok = load_model_for(model, device, dtype)
    base = BaseModelRecord.of(m, tok, model)  # the unedited model, as a fix file made in one go records
    editor = load_edited(m, load, tok).info["editor"]
    if trained is not None:
        editor.load(trained)
    try:
        result = editor.apply(m, tok, new)
    except RuntimeError as err:  # a trained part the fix file does not carry (MALMEN's hypernetwork)
        if not editor.trainable or trained is not None:
            raise
        raise InputError(f"{err}; give --trained DIR, the folder it was trained into") from None
    with undone_on_error(result):
        write_fix_file(m, editor, old + new, out, base, apply_seconds=result.seconds, peak_bytes=result.peak_bytes)
    return m, tok, len(old), len(new)


def _fixes_of(load: Path) -> tuple[dict, list[EditCase]]:
    """The manifest of the fix file `load` and its fixes, which must be the ones its manifest declares
    (the extended file records every fix it holds)."""
    manifest = _manifest_of(load)
    path = load / "fixes.jsonl"
    if not path.is_file():
        raise InputError(f"{load} has no fixes.jsonl: an extended fix file could not say which fixes it holds")
    want = manifest.get("fixes_sha256")
    if want != hashlib.sha256(regular_file(path, "fixes.jsonl", inside=load).read_bytes()).hexdigest():
        raise IntegrityError(f"{path} is not the fixes.jsonl its manifest declares; the fix file was altered")
    old = read_cases(path)
    if len(old) != manifest["fixes"]:
        raise IntegrityError(f"{path} holds {len(old)} fixes, its manifest {manifest['fixes']}")
    return manifest, old


def _manifest_of(load: Path) -> dict:
    """The checked manifest of the fix file `--load`; InputError when the folder is not one."""
    if not (load / "manifest.json").is_file():
        raise InputError(f"--load {load} is not a clmedit fix file (no manifest.json); make one with --fixes --out")
    return read_manifest(load)


def open_fix_file(load: Path, model: str, device: str | None = None, dtype: str = "auto"):
    """`model` with the fix file `load` in it: (model, tok, manifest). Never trains."""
    _manifest_of(load)  # a missing, tampered or unreadable manifest is named before the model loads
    check_device(device)
    m, tok = load_model_for(model, device, dtype)
    return m, tok, load_artifact(m, tok, load)


def answers(model, tok, prompts: list[str], task: str = "cnle", max_new_tokens: int = 48) -> list[tuple[str, str]]:
    """(prompt as the model sees it, its greedy answer) for each of `prompts` (bare ones get `task`'s template)."""
    from clmedit.eval.generate import generate

    texts = [as_prompt(p, task) for p in prompts]
    return [(t, a.strip()) for t, a in zip(texts, generate(model, tok, texts, max_new_tokens=max_new_tokens))]
