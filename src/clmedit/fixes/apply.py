"""`clmedit apply` as library calls: make a fix file from a list of fixes, or open one, then generate.

Everything a user can get wrong (the fixes file, the output folder, the editor, its trained part,
the device) is checked before the model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clmedit.errors import InputError
from clmedit.files import regular_file
from clmedit.fixes.artifact import load_artifact, save_artifact
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


def open_fix_file(load: Path, model: str, device: str | None = None, dtype: str = "auto"):
    """`model` with the fix file `load` in it: (model, tok, manifest). Never trains."""
    if not (load / "manifest.json").is_file():
        raise InputError(f"--load {load} is not a clmedit fix file (no manifest.json); make one with --fixes --out")
    check_device(device)
    read_manifest(load)  # a tampered or unreadable manifest is named before the model loads
    m, tok = load_model_for(model, device, dtype)
    return m, tok, load_artifact(m, tok, load)


def answers(model, tok, prompts: list[str], task: str = "cnle", max_new_tokens: int = 48) -> list[tuple[str, str]]:
    """(prompt as the model sees it, its greedy answer) for each of `prompts` (bare ones get `task`'s template)."""
    from clmedit.eval.generate import generate

    texts = [as_prompt(p, task) for p in prompts]
    return [(t, a.strip()) for t, a in zip(texts, generate(model, tok, texts, max_new_tokens=max_new_tokens))]
