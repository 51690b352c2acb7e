"""What every loop (per-case, lifelong, a Ray worker's training) sets up before its first edit.

`setup_run` checks everything a user can get wrong before the model loads (folder, device, cases,
editor); `usable_cases` and `ready` then do, once and in one place, what must precede the first
apply: drop the cases that cannot fit the model, fill the neighbours' reference answers with the
unedited model, let the editor do its one-off work, and checksum the unedited weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clmedit.data.schema import EditCase, SkippedLines, read_cases
from clmedit.errors import InputError
from clmedit.models.fingerprint import fingerprint
from clmedit.run import records, rundir
from clmedit.run.checks import case_problem, check_device, check_out_dir, context_window, skipped_summary
from clmedit.run.prepare import ensure_base_answers, resolve_data
from clmedit.run.settings import RunConfig

log = logging.getLogger(__name__)


def make_editor(name: str, model: str, preset: str | None = None, hparams: dict[str, Any] | None = None):
    """Editor `name` with hparams: defaults < `preset` (else the model's own, when one ships) < `hparams`.

    The one resolution `run`, `train` and `apply` share; a bad preset file or override is an InputError.
    """
    from clmedit.config import preset_for_model
    from clmedit.editors.base import get_editor

    return get_editor(name, preset=preset or preset_for_model(model), **(hparams or {}))


def load_model_for(name: str, device: str | None = None, dtype: str = "auto"):
    """(model, tok) on `device`, default cuda when available, in `dtype`; the model in eval mode."""
    from clmedit.models.load import load_model

    check_device(device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model(name, device=device, dtype=dtype)


@dataclass
class RunSetup:
    """What a run resolves before the model loads (everything a user can get wrong is checked here)."""

    out: Path  # the run folder, created and writable
    data: Path  # the case file
    every: list[EditCase]  # every readable case of the file (the identity's data digest)
    cases: list[EditCase]  # the first `limit` of them
    skip_info: dict[str, Any]  # the file's unreadable lines, for summary.json
    editor: Any  # the Editor
    hparams: dict[str, Any]  # its hparams, JSON-safe


def setup_run(config: RunConfig, editor=None) -> RunSetup:
    """Check the folder and device, read the cases, make the editor; shared by every loop."""
    given = [] if config.data.startswith("default:") else [Path(config.data)]
    rundir.check_folder(config.out, given)  # before a default dataset is built
    check_device(config.device)
    data = resolve_data(config.data, seed=config.seed)
    out = check_out_dir(rundir.check_folder(config.out, [data]))
    skipped = SkippedLines()
    every = read_cases(data, skipped)
    skip_info = skipped_summary(data, skipped)
    cases = every[: config.limit]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"{data}: case_id values are not unique; the runner needs them to resume")
    if editor is None:
        editor = make_editor(config.editor, config.model, config.preset, config.hparams)
    if editor.trainable and config.folds < 2:
        raise InputError(f"editor {editor.name!r} is trained on a split: run it with --folds 2")
    return RunSetup(out, data, every, cases, skip_info, editor, records.jsonable(editor.hparams))


def claim_run(config: RunConfig, setup: RunSetup, overwrite: bool = False, writes: str | None = None) -> None:
    """Make `setup.out` this configuration's folder, or refuse one of another configuration (rundir.claim).

    `writes`: the file this process appends to (default: its shard's cases file)."""
    about = {"data": config.data, "preset": config.preset, "hp": config.hparams}
    ident = rundir.identity(config, setup.editor.name, setup.hparams, setup.every)
    writes = writes or records.cases_file(setup.out, config.shard_tuple).name
    rundir.claim(setup.out, ident, about, overwrite, writes=writes)


def usable_cases(
    cases: list[EditCase], model, tok, fluency: bool, n: int | None = None
) -> tuple[list[EditCase], list[dict[str, str]]]:
    """The first `n` (default all) cases that fit the model (see run.checks.case_problem), and why
    each of the others looked at did not: [{"case_id", "reason"}]."""
    window = context_window(model)
    ok: list[EditCase] = []
    unusable: list[dict[str, str]] = []
    for case in cases:
        if n is not None and len(ok) == n:
            break
        problem = case_problem(case, tok, window, fluency)
        if problem is None:
            ok.append(case)
        else:
            log.warning("%s", problem)
            unusable.append({"case_id": case.case_id, "reason": problem})
    return ok, unusable


def ready(config: RunConfig, editor, model, tok, cases: list[EditCase]) -> dict[str, str]:
    """Before the first apply: neighbour answers of `cases` from the unedited model, the editor's
    one-off work (MEMIT/PMET statistics, kept out of the timed apply); returns the unedited
    weights' checksums (models.fingerprint.fingerprint), against which every restore is checked."""
    ensure_base_answers(model, tok, cases, config.answers_from)
    editor.prepare(model, tok)
    return fingerprint(model)
