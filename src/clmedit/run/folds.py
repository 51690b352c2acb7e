"""The k-fold protocol of trainable editors (MALMEN, A-GRACE, SCOPE): split, fit on the other folds, save, reload.

Fold k's cases are edited by an editor fitted on every other fold (the study: 2 folds, 1:1). A fitted
part is saved in `<run>/fold<k>` with a DONE marker written last (it records the seconds `fit` took), so
a resumed run loads it instead of training again, and `clmedit train --fold k` can prepare it on another
machine.

Folds are probe-disjoint by default (`training_half`): the neighbours of all cases come from one pool,
so the other folds' inputs include, verbatim, many of fold k's probes. Every training input equal to a
probe of fold k (one of its prompts, rephrases or neighbour prompts) is removed before `fit`, so no
editor is fitted on what it is scored on. `overlap=True` keeps the study's plain split (fidelity checks).
The data's unprobed inputs (data.unprobed) reach `fit` without any probe of fold k as well.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase, probe_texts, read_cases
from clmedit.data.unprobed import read_unprobed, unprobed_prompts
from clmedit.errors import InputError
from clmedit.files import atomic_write_text, finite_number
from clmedit.outputs import check_output_dir
from clmedit.results import DISJOINT_FOLDS, OVERLAPPING_FOLDS
from clmedit.run import records
from clmedit.run.checks import check_device, check_out_dir
from clmedit.run.prepare import resolve_data
from clmedit.run.setup import load_model_for, make_editor

log = logging.getLogger(__name__)


def split_folds(cases: list[EditCase], folds: int, seed: int = 0) -> list[list[EditCase]]:
    """Split cases into `folds` near-equal parts by a seeded shuffle (the study: 2 folds, 1:1).

    Fold k is evaluated with an editor fitted on all other folds; each case is in exactly one fold.
    """
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    return [[cases[j] for j in sorted(order[k::folds])] for k in range(folds)]


def scored_cases(cases: list[EditCase], config: Any) -> list[EditCase]:
    """The cases a run scores: all, or with `folds > 1` and `eval_limit` N the first N of each fold
    (in file order); the folds themselves, and so every training half, are drawn from all `cases`."""
    if config.folds < 2 or config.eval_limit is None:
        return cases
    chosen = {c.case_id for fold in split_folds(cases, config.folds, config.seed) for c in fold[: config.eval_limit]}
    return [c for c in cases if c.case_id in chosen]


def disjoint_training(train: list[EditCase], test: list[EditCase]) -> tuple[list[EditCase], dict[str, int]]:
    """`train` without any input that is a probe of `test`, and how many inputs that removed.

    A training case whose prompt or rephrase is a probe is dropped whole (its other inputs counted as
    removed too); a neighbour equal to a probe is dropped from the case that keeps the rest.
    """
    probes = probe_texts(test)
    kept: list[EditCase] = []
    dropped_cases = dropped_neighbours = removed = 0
    for case in train:
        if case.prompt in probes or case.rephrase in probes:
            dropped_cases += 1
            removed += 2 + len(case.neighbours)
            continue
        neighbours = [n for n in case.neighbours if n.prompt not in probes]
        if len(neighbours) < len(case.neighbours):
            dropped_neighbours += len(case.neighbours) - len(neighbours)
            case = case.model_copy(update={"neighbours": neighbours})
        kept.append(case)
    removed += dropped_neighbours
    return kept, {"train_cases": len(kept), "dropped_cases": dropped_cases,
                  "dropped_neighbours": dropped_neighbours, "removed_inputs": removed}  # fmt: skip


def training_half(
    folds: list[list[EditCase]], k: int, overlap: bool = False
) -> tuple[list[EditCase], dict[str, int]]:
    """What an editor scored on fold k is fitted on: every other fold, probe-disjoint from fold k
    (see `disjoint_training`) unless `overlap` (the study's split, kept for fidelity checks)."""
    train = [c for j, fold in enumerate(folds) if j != k for c in fold]
    if overlap:
        return train, {
            "train_cases": len(train),
            "dropped_cases": 0,
            "dropped_neighbours": 0,
            "removed_inputs": 0,
        }
    return disjoint_training(train, folds[k])


def fold_training(
    cases: list[EditCase], folds: int, seed: int = 0, overlap: bool = False
) -> dict[str, dict[str, int]]:
    """Per test fold ("0", "1", ...), the counts `training_half` reports: what summary.json records."""
    parts = split_folds(cases, folds, seed)
    return {str(k): training_half(parts, k, overlap)[1] for k in range(folds)}


def unprobed_for(data: Path, test: list[EditCase]) -> list[str]:
    """The data's unprobed inputs (data.unprobed: none is a probe of any case it was built with) that
    an editor fitted to be scored on `test` may read: the file is a user's, so its lines that are a
    probe of `test` are removed here, whatever it holds."""
    return unprobed_prompts(read_unprobed(data), test)


def fit_fold(
    editor, model, tok, train: list[EditCase], fold_dir: Path, unprobed: Sequence[str] = ()
) -> dict[str, Any]:
    """Fit a trainable editor on the other folds (and `unprobed`, see `unprobed_for`) and save it,
    or load what an earlier run saved.

    Returns the fit history ({} when loaded). The DONE marker is written after the save, so an
    interrupted save is redone, never half-loaded.
    """
    if (fold_dir / "DONE").is_file():
        log.info("loading %s's trained part from %s", editor.name, fold_dir)
        editor.load(fold_dir)
        return {}
    log.info("fitting %s on %d cases", editor.name, len(train))
    t0 = time.perf_counter()
    history = editor.fit(model, tok, train, unprobed=list(unprobed))
    if editor.trainable:
        seconds = time.perf_counter() - t0
        editor.save(fold_dir)
        done = {"fit_seconds": round(seconds, 2), "train_cases": len(train)}
        atomic_write_text(fold_dir / "DONE", json.dumps(done) + "\n")
    return history


def recorded_fit_seconds(fold_dir: Path) -> float | None:
    """The seconds `fit` took for the part saved in `fold_dir`, as its DONE marker records them.

    None when not recorded: no part yet, a run of an earlier version (an empty marker), or a marker
    whose figure is not a finite, non-negative number (it is a file: never trusted as a number).
    """
    try:
        value = json.loads((fold_dir / "DONE").read_text(encoding="utf-8"))["fit_seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return finite_number(value, low=0)


def protocol(config: Any) -> str:
    """The fold protocol's name as summaries and tables show it."""
    return OVERLAPPING_FOLDS if getattr(config, "folds_overlap", False) else DISJOINT_FOLDS


def train_fold(config: Any, fold: int) -> dict[str, Any]:
    """Fit `config.editor` (a RunConfig) on every case outside fold `fold` and save it to `config.out`.

    The split is the runner's, so a run with the same --folds/--seed/--limit whose `fold<k>` folder is
    this one loads it instead of retraining. Returns the summary also written to `train.json`.
    """
    if not 0 <= fold < config.folds:
        raise InputError(
            f"--fold {fold} does not exist with --folds {config.folds} (use 0..{config.folds - 1})"
        )
    editor = make_editor(config.editor, config.model, config.preset, config.hparams)
    if not editor.trainable:
        raise InputError(f"editor {editor.name!r} has nothing to train")
    # a trained part's folder is ours when training wrote it (train.json) or a run saved it (DONE)
    check_output_dir(config.out, [config.data], ours=lambda p: (p / "train.json").is_file() or (p / "DONE").is_file())
    out = check_out_dir(config.out)
    check_device(config.device)
    data = resolve_data(config.data, seed=config.seed)
    cases = read_cases(data)[: config.limit]
    parts = split_folds(cases, config.folds, config.seed)
    train, removed = training_half(parts, fold, config.folds_overlap)
    model, tok = load_model_for(config.model, config.device, config.dtype)
    (out / "DONE").unlink(missing_ok=True)  # training anew: what was saved before is stale
    unprobed = unprobed_for(data, parts[fold])
    history = fit_fold(editor, model, tok, train, out, unprobed)
    summary = {"editor": editor.name, "model": config.model, "fold": fold, "folds": config.folds,
               "train_cases": len(train), "training": removed, "unprobed_offered": len(unprobed),
               "protocol": protocol(config), "history": {k: v for k, v in history.items() if not isinstance(v, list)}}  # fmt: skip
    atomic_write_text(out / "train.json", json.dumps(records.jsonable(summary), indent=2))
    return summary
