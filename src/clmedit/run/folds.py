"""The k-fold protocol of trainable editors (MALMEN, A-GRACE): split, fit on the other folds, save, reload.

Fold k's cases are edited by an editor fitted on every other fold (the study: 2 folds, 1:1). A fitted
part is saved in `<run>/fold<k>` with a DONE marker written last, so a resumed run loads it instead
of training again, and `clmedit train --fold k` can prepare it on another machine.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase, read_cases
from clmedit.errors import InputError
from clmedit.files import atomic_write_text

log = logging.getLogger(__name__)


def split_folds(cases: list[EditCase], folds: int, seed: int = 0) -> list[list[EditCase]]:
    """Split cases into `folds` near-equal parts by a seeded shuffle (the study: 2 folds, 1:1).

    Fold k is evaluated with an editor fitted on all other folds; each case is in exactly one fold.
    """
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    return [[cases[j] for j in sorted(order[k::folds])] for k in range(folds)]


def fit_fold(editor, model, tok, train: list[EditCase], fold_dir: Path) -> dict[str, Any]:
    """Fit a trainable editor on the other folds and save it, or load what an earlier run saved.

    Returns the fit history ({} when loaded). The DONE marker is written after the save, so an
    interrupted save is redone, never half-loaded.
    """
    if (fold_dir / "DONE").is_file():
        log.info("loading %s's trained part from %s", editor.name, fold_dir)
        editor.load(fold_dir)
        return {}
    log.info("fitting %s on %d cases", editor.name, len(train))
    history = editor.fit(model, tok, train)
    if editor.trainable:
        editor.save(fold_dir)
        atomic_write_text(fold_dir / "DONE", "")
    return history


def train_fold(config: Any, fold: int) -> dict[str, Any]:
    """Fit `config.editor` (a RunConfig) on every case outside fold `fold` and save it to `config.out`.

    The split is the runner's, so a run with the same --folds/--seed/--limit whose `fold<k>` folder is
    this one loads it instead of retraining. Returns the summary also written to `train.json`.
    """
    from clmedit.run import records
    from clmedit.run.checks import check_device, check_out_dir
    from clmedit.run.prepare import resolve_data
    from clmedit.run.runner import load_model_for, make_editor

    if not 0 <= fold < config.folds:
        raise InputError(
            f"--fold {fold} does not exist with --folds {config.folds} (use 0..{config.folds - 1})"
        )
    editor = make_editor(config.editor, config.model, config.preset, config.hparams)
    if not editor.trainable:
        raise InputError(f"editor {editor.name!r} has nothing to train")
    out = check_out_dir(config.out)
    check_device(config.device)
    cases = read_cases(resolve_data(config.data, seed=config.seed))[: config.limit]
    parts = split_folds(cases, config.folds, config.seed)
    train = [c for k, part in enumerate(parts) if k != fold for c in part]
    model, tok = load_model_for(config.model, config.device, config.dtype)
    (out / "DONE").unlink(missing_ok=True)  # training anew: what was saved before is stale
    history = fit_fold(editor, model, tok, train, out)
    summary = {"editor": editor.name, "model": config.model, "fold": fold, "folds": config.folds,
               "train_cases": len(train), "history": {k: v for k, v in history.items() if not isinstance(v, list)}}  # fmt: skip
    atomic_write_text(out / "train.json", json.dumps(records.jsonable(summary), indent=2))
    return summary
