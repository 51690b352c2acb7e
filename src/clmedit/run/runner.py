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

import json
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import set_seed

from clmedit.data.schema import EditCase, SkippedLines, read_cases
from clmedit.editors.registry import editor_label
from clmedit.errors import InputError
from clmedit.files import atomic_write_text
from clmedit.run import records, rundir
from clmedit.run.checks import case_problem, check_device, check_out_dir, context_window, skipped_summary
from clmedit.run.folds import fit_fold, fold_training, protocol, split_folds, train_fold, training_half  # noqa: F401 (train_fold: public here too)
from clmedit.run.prepare import ensure_base_answers, resolve_data
from clmedit.run.settings import RunConfig, parse_shard  # noqa: F401 (the runner's public names)

log = logging.getLogger(__name__)


def shard_cases(cases: list[EditCase], shard: tuple[int, int]) -> list[EditCase]:
    """Every n-th case from i: shards are disjoint and their union is all cases."""
    i, n = shard
    return cases[i::n]


def scored_cases(cases: list[EditCase], config: RunConfig) -> list[EditCase]:
    """The cases a run scores: all, or with `folds > 1` and `eval_limit` N the first N of each fold
    (in file order); the folds themselves, and so every training half, are drawn from all `cases`."""
    if config.folds < 2 or config.eval_limit is None:
        return cases
    chosen = {c.case_id for fold in split_folds(cases, config.folds, config.seed) for c in fold[: config.eval_limit]}
    return [c for c in cases if c.case_id in chosen]


def fold_facts(config: RunConfig, editor, cases: list[EditCase]) -> dict[str, Any]:
    """For a trained editor's summary: the fold protocol and, per test fold, the training inputs removed."""
    if not editor.trainable or config.folds < 2:
        return {}
    return {"folds_protocol": protocol(config),
            "fold_training": fold_training(cases, config.folds, config.seed, config.folds_overlap)}  # fmt: skip


def make_editor(name: str, model: str, preset: str | None = None, hparams: dict[str, Any] | None = None):
    """Editor `name` with hparams: defaults < `preset` (else the model's own, when one ships) < `hparams`.

    The one resolution `run`, `train` and `apply` share; a bad preset file or override is an InputError.
    """
    from clmedit.config import preset_for_model
    from clmedit.editors.base import get_editor

    return get_editor(name, preset=preset or (model if preset_for_model(model) else None), **(hparams or {}))


def load_model_for(name: str, device: str | None = None, dtype: str = "auto"):
    """(model, tok) on `device`, default cuda when available, in `dtype`; the model in eval mode."""
    from clmedit.models.load import load_model

    check_device(device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model(name, device=device, dtype=dtype)


def error_record(err: BaseException) -> dict[str, str]:
    """An exception as a record's `error` field: type, message, the innermost frames."""
    return {"type": type(err).__name__, "message": str(err)[:2000], "where": traceback.format_exc(limit=-3)}


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
    """Check the folder and device, read the cases, make the editor; shared by `run` and `run_sequential`."""
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


def run(config: RunConfig, model=None, tok=None, editor=None, overwrite: bool = False) -> Path:
    """Run the grid cell `config` (resuming if its directory has records); returns the run directory.

    `model`/`tok` may be passed to reuse a loaded model across runs (it must be the unedited model);
    `editor` may be an Editor instance not in the registry (then `config.editor` is only a label).
    The folder must belong to this configuration (see `rundir`); `overwrite` discards what it holds.
    Everything a user can get wrong is checked before the model loads. With `config.sequential`
    the run is a lifelong one (`run.sequential.run_sequential`).
    """
    if config.sequential is not None:
        from clmedit.run.sequential import run_sequential

        return run_sequential(config, model, tok, editor, overwrite)
    from clmedit.eval.protocol import evaluate_case
    from clmedit.models.text import model_name as name_of

    setup = setup_run(config, editor)
    out, data, editor = setup.out, setup.data, setup.editor
    cases = setup.cases
    path = records.cases_file(out, config.shard_tuple)
    with rundir.writing(path, config.shard):
        claim_run(config, setup, overwrite)
        done = records.done_ids(out)
        scored = scored_cases(cases, config)
        todo = [c for c in shard_cases(scored, config.shard_tuple) if c.case_id not in done]
        log.info("%s on %s: %d cases to do", editor.name, data.name, len(todo))
        if todo and model is None:
            model, tok = load_model_for(config.model, config.device, config.dtype)
        if todo:
            _run_cases(
                config, editor, model, tok, cases, todo, data, path, out, evaluate_case, name_of(model)
            )
        write_run_summary(config, setup)
    return out


def claim_run(config: RunConfig, setup: RunSetup, overwrite: bool = False) -> None:
    """Make `setup.out` this configuration's folder, or refuse one of another configuration (rundir.claim)."""
    about = {"data": config.data, "preset": config.preset, "hp": config.hparams}
    ident = rundir.identity(config, setup.editor.name, setup.hparams, setup.every)
    writes = records.cases_file(setup.out, config.shard_tuple).name
    rundir.claim(setup.out, ident, about, overwrite, writes=writes)


def write_run_summary(config: RunConfig, setup: RunSetup) -> dict[str, Any]:
    """The run's summary.json over every shard's records of the cases it scores."""
    ids = {c.case_id for c in scored_cases(setup.cases, config)}
    return write_summary(setup.out, config, case_ids=ids, hparams=setup.hparams,
                         skipped_lines=setup.skip_info, label=editor_label(setup.editor.name),
                         **fold_facts(config, setup.editor, setup.cases))  # fmt: skip


def _run_cases(config, editor, model, tok, cases, todo, data, path, out, evaluate_case, mname) -> None:
    """Edit and score `todo` fold by fold, batch by batch, appending one record per case to `path`."""
    window = context_window(model)
    ok = []
    for case in todo:  # cases that cannot fit the model are per-case errors, before any work
        problem = case_problem(case, tok, window, config.fluency)
        if problem is None:
            ok.append(case)
            continue
        log.warning("%s", problem)
        error = {"type": "InputError", "message": problem}
        records.append_record(path, {"case_id": case.case_id, "task": case.task, "error": error,
                                     "editor": editor.name, "model": mname})  # fmt: skip
    if not ok:
        return
    ensure_base_answers(model, tok, ok, config.answers_from)
    editor.prepare(model, tok)  # one-off work (MEMIT/PMET statistics) stays out of the timed apply
    clean = records.fingerprint(model)
    folds = split_folds(cases, config.folds, config.seed) if config.folds > 1 else [cases]
    todo_ids = {c.case_id for c in ok}
    bar = tqdm(total=len(ok), desc=f"{editor.name}/{data.stem}", unit="case", dynamic_ncols=True)
    for k, fold in enumerate(folds):
        fold_todo = [c for c in fold if c.case_id in todo_ids]
        if not fold_todo:
            continue
        if editor.trainable:
            train, _ = training_half(folds, k, config.folds_overlap)
            fit_fold(editor, model, tok, train, out / f"fold{k}")
        for start in range(0, len(fold_todo), config.batch_size):
            batch = fold_todo[start : start + config.batch_size]
            batch_id = f"{k}:{start // config.batch_size}" if config.batch_size > 1 else batch[0].case_id
            for rec in _edit_and_score(config, editor, model, tok, batch, mname, clean, evaluate_case):
                rec.update(fold=k, batch=batch_id, editor=editor.name, model=mname)
                records.append_record(path, rec)
                bar.update(1)
    bar.close()


def _edit_and_score(config, editor, model, tok, batch, mname, clean, evaluate_case) -> list[dict[str, Any]]:
    """Apply one batch, score each case, always restore. Returns one record per case."""
    set_seed(config.seed)  # python, numpy and torch (every device) at once
    result, failure = None, None
    recs: list[dict[str, Any]] = []
    try:
        analysis = {c.case_id: editor.key_record(model, tok, c) for c in batch} if config.keys else {}
        result = editor.apply(model, tok, batch)
        for case in batch:
            set_seed(config.seed)
            t0 = time.perf_counter()
            scores = evaluate_case(model, tok, case, model_name=mname, fluency=config.fluency,
                                   seed=config.seed, budget=config.budget, evaluation=config.evaluation)  # fmt: skip
            dumped = scores.model_dump(mode="json")
            recs.append(
                {
                    "case_id": case.case_id,
                    "task": case.task,
                    "scores": dumped,
                    "outputs": dumped.pop("outputs", {}),
                    "eval_seconds": time.perf_counter() - t0,
                    "error": None,
                }
            )
    except Exception as err:  # one bad case must not end a 1,000-case run
        failure = error_record(err)
        log.warning("case %s failed: %s: %s", batch[0].case_id, failure["type"], failure["message"])
    finally:
        if result is not None:
            result.restore()
    if failure is not None or config.verify_restore:
        changed = records.fingerprint_diff(clean, records.fingerprint(model))
        if changed:
            raise RuntimeError(
                f"editor {editor.name!r} left the model changed after case {batch[0].case_id} "
                f"({', '.join(changed[:5])}); stopping so no edit leaks into the next case"
            )
    if failure is not None:
        return [{"case_id": c.case_id, "task": c.task, "error": failure} for c in batch]
    info = records.jsonable(result.info) if result is not None else {}
    for rec in recs:
        rec.update(seconds=result.seconds, peak_bytes=result.peak_bytes, batch_size=len(batch))
        rec["resident_peak_bytes"] = result.resident_peak_bytes
        rec["info"] = {**info, **(analysis.get(rec["case_id"]) or {})}
    return recs


def write_summary(
    out: Path, config: RunConfig | None = None, case_ids: set[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """summary.json and table.md from the records in `out` (all shards so far), written atomically.

    `case_ids` restricts it to the run's selection (a rerun with a smaller --limit summarises only
    those). Keys of an earlier summary that records cannot give (config, hparams, skipped lines)
    are kept.
    """
    from clmedit.report.tables import render_markdown

    path = out / "summary.json"
    try:
        earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:  # torn by hand: it is rebuilt from the records
        earlier = {}
    summary = {k: v for k, v in earlier.items() if k in ("config", "hparams", "skipped_lines")}
    recs = [r for r in records.read_records(out) if case_ids is None or str(r["case_id"]) in case_ids]
    summary.update(records.summarise_records(recs))
    if config is not None:
        summary["config"] = config.model_dump(mode="json")
    summary.update(records.jsonable(extra))
    atomic_write_text(path, json.dumps(summary, indent=2))
    atomic_write_text(out / "table.md", render_markdown([summary]) + "\n")
    return summary
