"""One run: one model x one editor x one dataset, edited and evaluated case by case.

For each batch of `batch_size` cases (1 = the study's single edits):

    seed -> result = editor.apply(model, tok, batch) -> evaluate_case(model, tok, c) for c in batch
         -> result.restore()   (always, in `finally`)

Invariants: before every apply the model is bitwise the unedited model (checked after a failure,
and after every restore with `verify_restore`); each finished case is one durable line in
`cases.jsonl`, so a rerun skips it; a failing case records its error and the run goes on.
Neighbour reference answers are filled before any edit (run.prepare.ensure_base_answers).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import set_seed

from clmedit.data.schema import EditCase
from clmedit.errors import InputError
from clmedit.eval.protocol import evaluate_case
from clmedit.eval.scores import CaseScores
from clmedit.models.fingerprint import fingerprint, fingerprint_diff
from clmedit.models.text import model_name as name_of
from clmedit.results import CaseRecord
from clmedit.run import records, rundir
from clmedit.run.folds import fit_fold, scored_cases, split_folds, training_half, unprobed_for
from clmedit.run.settings import RunConfig
from clmedit.run.setup import RunSetup, claim_run, load_model_for, ready, setup_run, usable_cases
from clmedit.run.summary import write_run_summary

log = logging.getLogger(__name__)


def shard_cases(cases: list[EditCase], shard: tuple[int, int]) -> list[EditCase]:
    """Every n-th case from i: shards are disjoint and their union is all cases."""
    i, n = shard
    return cases[i::n]


@dataclass
class _Loop:
    """What the per-case loop holds while it edits and scores: the run, the loaded model, where the
    records go, and the unedited weights' checksums every restore is checked against."""

    config: RunConfig
    setup: RunSetup
    model: Any
    tok: Any
    path: Path  # this shard's cases file
    model_name: str
    clean: dict[str, str] = field(default_factory=dict)


def run(config: RunConfig, model=None, tok=None, editor=None, overwrite: bool = False) -> Path:
    """Run the per-case cell `config` (resuming if its directory has records); returns the run directory.

    `model`/`tok` may be passed to reuse a loaded model across runs (it must be the unedited model);
    `editor` may be an Editor instance not in the registry (then `config.editor` is only a label).
    The folder must belong to this configuration (see `rundir`); `overwrite` discards what it holds.
    Everything a user can get wrong is checked before the model loads. A lifelong configuration
    (`config.sequential`) is `lifelong.sequence.run_sequential`'s (`grid.cell.run` runs either).
    """
    if config.sequential is not None:
        raise InputError("a --sequential run is a lifelong one: run it with clmedit.grid.cell.run")
    setup = setup_run(config, editor)
    path = records.cases_file(setup.out, config.shard_tuple)
    with rundir.writing(path, config.shard):
        claim_run(config, setup, overwrite)
        done = records.done_ids(setup.out)
        scored = scored_cases(setup.cases, config)
        todo = [c for c in shard_cases(scored, config.shard_tuple) if c.case_id not in done]
        log.info("%s on %s: %d cases to do", setup.editor.name, setup.data.name, len(todo))
        if todo and model is None:
            model, tok = load_model_for(config.model, config.device, config.dtype)
        if todo:
            _run_cases(_Loop(config, setup, model, tok, path, name_of(model)), todo)
        write_run_summary(config, setup)
    return setup.out


def _run_cases(loop: _Loop, todo: list[EditCase]) -> None:
    """Edit and score `todo` fold by fold, batch by batch, appending one record per case to `loop.path`."""
    config, editor, out = loop.config, loop.setup.editor, loop.setup.out
    ok, unusable = usable_cases(todo, loop.model, loop.tok, config.fluency)
    tasks = {c.case_id: c.task for c in todo}
    for bad in unusable:  # cases that cannot fit the model are per-case errors, before any work
        error = {"type": "InputError", "message": bad["reason"]}
        records.append_record(loop.path, CaseRecord(case_id=bad["case_id"], task=tasks[bad["case_id"]],
                                                    error=error, editor=editor.name, model=loop.model_name))  # fmt: skip
    if not ok:
        return
    loop.clean = ready(config, editor, loop.model, loop.tok, ok)
    cases = loop.setup.cases
    folds = split_folds(cases, config.folds, config.seed) if config.folds > 1 else [cases]
    todo_ids = {c.case_id for c in ok}
    bar = tqdm(total=len(ok), desc=f"{editor.name}/{loop.setup.data.stem}", unit="case", dynamic_ncols=True)
    for k, fold in enumerate(folds):
        fold_todo = [c for c in fold if c.case_id in todo_ids]
        if not fold_todo:
            continue
        if editor.trainable:
            train, _ = training_half(folds, k, config.folds_overlap)
            fit_fold(
                editor, loop.model, loop.tok, train, out / f"fold{k}", unprobed_for(loop.setup.data, fold)
            )
        for start in range(0, len(fold_todo), config.batch_size):
            batch = fold_todo[start : start + config.batch_size]
            batch_id = f"{k}:{start // config.batch_size}" if config.batch_size > 1 else batch[0].case_id
            for rec in _edit_and_score(loop, batch):
                where = {"fold": k, "batch": batch_id, "editor": editor.name, "model": loop.model_name}
                records.append_record(loop.path, rec.model_copy(update=where))
                bar.update(1)
    bar.close()


def _edit_and_score(loop: _Loop, batch: list[EditCase]) -> list[CaseRecord]:
    """Apply one batch, score each case, always restore. Returns one record per case."""
    config, editor, model, tok = loop.config, loop.setup.editor, loop.model, loop.tok
    set_seed(config.seed)  # python, numpy and torch (every device) at once
    result, failure = None, None
    scored: list[tuple[EditCase, CaseScores, float]] = []
    try:
        analysis = {c.case_id: editor.key_record(model, tok, c) for c in batch} if config.keys else {}
        result = editor.apply(model, tok, batch)
        for case in batch:
            set_seed(config.seed)
            t0 = time.perf_counter()
            scores = evaluate_case(model, tok, case, model_name=loop.model_name, fluency=config.fluency,
                                   seed=config.seed, budget=config.budget,
                                   evaluation=config.evaluation)  # fmt: skip
            scored.append((case, scores, time.perf_counter() - t0))
    except Exception as err:  # one bad case must not end a 1,000-case run
        failure = records.error_record(err)
        log.warning("case %s failed: %s: %s", batch[0].case_id, failure["type"], failure["message"])
    finally:
        if result is not None:
            result.restore()
    if failure is not None or config.verify_restore:
        changed = fingerprint_diff(loop.clean, fingerprint(model))
        if changed:
            raise RuntimeError(
                f"editor {editor.name!r} left the model changed after case {batch[0].case_id} "
                f"({', '.join(changed[:5])}); stopping so no edit leaks into the next case"
            )
    if failure is not None:
        return [CaseRecord(case_id=c.case_id, task=c.task, error=failure) for c in batch]
    info = records.jsonable(result.info) if result is not None else {}
    cost = {"seconds": result.seconds, "peak_bytes": result.peak_bytes, "batch_size": len(batch),
            "resident_peak_bytes": result.resident_peak_bytes}  # fmt: skip
    return [CaseRecord(case_id=case.case_id, task=case.task, scores=scores, eval_seconds=secs, error=None,
                       info={**info, **(analysis.get(case.case_id) or {})}, **cost)
            for case, scores, secs in scored]  # fmt: skip
