"""`clmedit study`: the study's whole results section, one resumable command.

The grid is task x editor (the unedited row first, then FT-L, ROME, MEMIT, PMET, MALMEN, GRACE,
A-GRACE and its two ablations, and our SCOPE beside them); trained editors use the 2-fold protocol.
Each cell is one `run()` into `out/<task>/<editor>`, so a rerun resumes case by case, trained parts
(encoders, hypernetworks) are loaded from the run's fold folders, and MEMIT/PMET statistics come from
their disk cache. The model is loaded once. `--shard i/n` takes every n-th cell. At the end the report (tables, figures,
report.html) is written from the results files.

Sizes: `quick` (every editor and table, fewer cases and training steps), `default` (about 2 hours on
2 CPU cores on smollm2-135m), `full` (every built case, the presets' training), or a fixed `limit`.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from clmedit.editors.base import Editor, editor_class
from clmedit.errors import InputError
from clmedit.files import atomic_write_text, slug
from clmedit.grid.cell import run
from clmedit.run.settings import RunConfig, parse_shard
from clmedit.run.setup import load_model_for, make_editor

if TYPE_CHECKING:
    from clmedit.grid.distributed import Cluster

log = logging.getLogger(__name__)

STUDY_EDITORS = (
    "none",
    "ft",
    "rome",
    "memit",
    "pmet",
    "malmen",
    "grace",
    "agrace-no-cl",
    "agrace-last",
    "agrace",
    "scope",  # ours, not the paper's: its rows say so
)
# The evaluation of one case (greedy outputs + 64 sampled fluency tokens for two texts), by task, as wall
# seconds on 2 CPU cores: half the mean per-case seconds of the default study's two 1-thread workers
# (smollm2-135m, its records' eval_seconds). Each editor states its own cost (Editor.APPLY_SECONDS,
# fit_seconds, once_seconds), measured the same way. For the estimate and the ETA only.
EVAL_SECONDS = {"cnle": 6.6, "csne": 7.2}


@dataclass(frozen=True)
class Size:
    """Cases per run by editor (None: every built case) and hparams overrides per editor."""

    name: str
    cases: dict[str, int | None]
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""


_LOCATE = ("rome", "memit", "pmet")


def size_preset(name: str, limit: int | None = None) -> Size:
    """'quick' | 'default' | 'full', or a fixed per-run `limit` for every editor."""
    if limit is not None:
        return Size(
            "limit", dict.fromkeys(STUDY_EDITORS, limit), note=f"{limit} cases per run, presets' training."
        )
    if name == "full":
        return Size("full", dict.fromkeys(STUDY_EDITORS), note="Every built case, presets' training.")
    if name == "default":
        cases = {e: (10 if e in _LOCATE else 30) for e in STUDY_EDITORS}
        return Size("default", cases, {"malmen": {"steps": 100}},
                    note="30 cases per run (ROME, MEMIT, PMET: 10); MALMEN 100 meta-steps per fold.")  # fmt: skip
    if name == "quick":
        cases = {e: (2 if e in _LOCATE else 4) for e in STUDY_EDITORS}
        enc = {"enc_epochs": 10, "enc_patience": 3}
        hp = {"malmen": {"steps": 10, "val_every": 5}, "agrace": enc, "agrace-last": enc,
              "scope": {**enc, "enc_selection_seeds": 1}, "memit": {"stats_samples": 200}, "pmet": {"stats_samples": 200}}  # fmt: skip
        note = ("QUICK: 4 cases per run (ROME, MEMIT, PMET: 2), MALMEN 10 meta-steps, A-GRACE encoders "
                "(and SCOPE's) 10 epochs, MEMIT/PMET statistics from 200 windows: a smoke test of the pipeline, not the study's numbers.")  # fmt: skip
        return Size("quick", cases, hp, note)
    raise InputError(f"unknown study size {name!r}; use quick, default, full or a --limit")


def plan(model: str, tasks: list[str], size: Size, out: Path, data: dict[str, str] | None = None,
         **common: Any) -> list[RunConfig]:  # fmt: skip
    """Every cell of the grid as a RunConfig (unedited row first per task)."""
    configs = []
    for task in tasks:
        for editor in STUDY_EDITORS:
            configs.append(RunConfig(
                model=model, editor=editor, data=(data or {}).get(task, f"default:{task}"),
                out=out / slug(task) / slug(editor), limit=size.cases.get(editor),
                hparams=size.hparams.get(editor, {}), folds=2 if editor_class(editor).trainable else 1, keys=True,
                **common,
            ))  # fmt: skip
    return configs


def estimate_seconds(config: RunConfig, n_cases: int, editor: Editor) -> float:
    """Rough wall seconds of one cell on smollm2-135m / 2 CPU cores (for the estimate and the ETA)."""
    task = "csne" if "csne" in config.data else "cnle"
    secs = n_cases * (EVAL_SECONDS[task] + editor.APPLY_SECONDS.get(task, 0.0))
    return secs + config.folds * editor.fit_seconds(task) if editor.trainable else secs


def _estimate(mine: list[tuple[tuple[str, str], RunConfig]], built: dict[str, int]) -> tuple[dict[int, float], float]:
    """Per cell (by id of its config) its estimated seconds, and the whole shard's (with one-off work)."""
    from clmedit.run.records import done_ids

    est, once = {}, [0.0]
    for (task, _), c in mine:
        todo = max(0, min(built[task], c.limit or built[task]) - len(done_ids(c.out)))
        try:
            editor = make_editor(c.editor, c.model, c.preset, c.hparams)
        except Exception:  # the cell fails when it runs, with its error; no estimate meanwhile
            est[id(c)] = 0.0
            continue
        est[id(c)] = estimate_seconds(c, todo, editor) if todo else 0.0
        once.append(editor.once_seconds() if todo else 0.0)
    return est, sum(est.values()) + max(once)


def _dataset_info(model, tok, task: str, spec: str, n: int | None, out: Path, seed: int) -> dict[str, Any]:
    """Table III statistics of the study's cases (with the specificity targets) and a slim case file."""
    from clmedit.data.schema import read_cases
    from clmedit.data.stats import TokenCounter, length_table
    from clmedit.models.text import encode, model_name
    from clmedit.run.prepare import ensure_base_answers, resolve_data

    path = resolve_data(spec, seed=seed)
    cases = read_cases(path)[:n]
    name = model_name(model)
    ensure_base_answers(model, tok, cases, model_name=name)
    counter = TokenCounter(f"the tokenizer of {name}", lambda text: len(encode(tok, text)))  # the paper's count
    lengths = length_table(cases, counter)
    answers = [counter.count(nb.answers.get(name, "")) for c in cases for nb in c.neighbours]
    lengths["neighbour_answer"] = {  # the specificity targets: the unedited model's own outputs
        "mean": round(statistics.fmean(answers), 2) if answers else 0.0,
        "median": float(statistics.median(answers)) if answers else 0.0,
        "n": len(answers),
    }
    slim = [{"case_id": c.case_id, "prompt": c.prompt, "target": c.target, "rephrase": c.rephrase,
             "neighbours": [{"prompt": nb.prompt, "expected": nb.answers.get(name, "")} for nb in c.neighbours]}
            for c in cases]  # fmt: skip
    rel = f"{slug(task)}/study_cases.jsonl"
    atomic_write_text(out / rel, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in slim))
    return {
        "cases": len(cases),
        "lengths": lengths,
        "token_counter": counter.name,
        "cases_file": rel,
        "data": str(path),
    }


def study(
    model: str = "smollm2-135m", tasks: tuple[str, ...] = ("cnle", "csne"), size: str = "default",
    limit: int | None = None, shard: str = "0/1", out: str | Path = "results/study",
    data: dict[str, str] | None = None, device: str | None = None, fluency: bool = True, seed: int = 0,
    lm=None, tok=None, folds_overlap: bool = False, cluster: Cluster | None = None, budget: str = "study",
    evaluation: str = "reference",
) -> Path:  # fmt: skip
    """Run the grid (resuming), then write the report; returns the path of report.html.

    `data` maps a task to a case file (default: the built-in `default:<task>` cases); `lm`/`tok` reuse
    a loaded model (it must be the unedited model). `folds_overlap`: the study's own split for the
    trained editors (their test probes among their training inputs; rows are labelled so). With a
    `cluster` the runs go to Ray workers (grid.distributed: the same records, sooner); this process
    still fills the datasets' answers.
    `budget` is every run's generation budget, `evaluation` its evaluation path (RunConfig).
    """
    from clmedit.data.schema import read_cases
    from clmedit.report.study import write_study_report
    from clmedit.run.prepare import resolve_data

    t0 = time.perf_counter()
    out, sz = Path(out), size_preset(size, limit)
    tasks = _check_study(out, model, sz, budget, tasks)
    i, n = parse_shard(shard)
    specs = {t: (data or {}).get(t, f"default:{t}") for t in tasks}
    built = {t: len(read_cases(resolve_data(specs[t], seed=seed))) for t in tasks}  # builds defaults once
    configs = plan(model, tasks, sz, out, specs, seed=seed, device=device, fluency=fluency,
                   folds_overlap=folds_overlap, budget=budget, evaluation=evaluation)  # fmt: skip
    cells = [(t, e) for t in tasks for e in STUDY_EDITORS]  # the order of plan()
    mine = list(zip(cells, configs))[i::n]
    est, total = _estimate(mine, built)
    log.info("study: %d of %d runs (shard %s); estimated %.0f min (smollm2-135m, 2 CPU cores)",
             len(mine), len(configs), shard, total / 60)  # fmt: skip
    if lm is None:
        lm, tok = load_model_for(model, device)
    widest = [sz.cases[e] for e in STUDY_EDITORS]
    datasets = {
        t: _dataset_info(lm, tok, t, specs[t], None if None in widest else max(widest), out, seed)
        for t in tasks
    }
    runs = [{"task": t, "editor": e, "dir": str(c.out.relative_to(out))} for (t, e), c in zip(cells, configs)]
    manifest = {"model": model, "size": sz.name, "size_note": sz.note, "budget": budget, "tasks": tasks,
                "runs": runs, "datasets": datasets}  # fmt: skip
    atomic_write_text(out / "study.json", json.dumps(manifest, indent=1))
    if cluster is not None:  # the cells run on Ray workers (grid.distributed shows their progress)
        from clmedit.grid.distributed import run_grid

        lm = tok = None  # the workers load their own copies: free this one (a GPU's memory above all)
        why = run_grid([c for _, c in mine], cluster)
        failed = [f"{e} on {t}: {w}" for ((t, e), _), w in zip(mine, why) if w is not None]
    else:
        failed = _run_here(mine, lm, tok, est, total)
    manifest.update(wall_seconds=time.perf_counter() - t0, failed_runs=failed)
    atomic_write_text(out / "study.json", json.dumps(manifest, indent=1))
    page = write_study_report(out)
    log.info("study: %d runs in %.1f min; report in %s", len(mine), manifest["wall_seconds"] / 60, page)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(mine)} runs failed (rerun to retry them; report in {page}): "
                           + "; ".join(failed))  # fmt: skip
    return page


def _check_study(out: Path, model: str, sz: Size, budget: str, tasks: tuple[str, ...]) -> list[str]:
    """The study's tasks, checked with its budget; a folder of another study (model, size, budget) is refused."""
    tasks_ = [t.strip().lower() for t in tasks if t.strip()]
    if not tasks_ or any(t not in ("cnle", "csne") for t in tasks_):
        raise InputError(f"--tasks must name cnle and/or csne, got {','.join(tasks_) or 'nothing'}")
    manifest_path = out / "study.json"
    old = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    if budget not in ("study", "in-context"):
        raise InputError(f"--budget must be 'study' or 'in-context', got {budget!r}")
    if old and (old.get("model"), old.get("size"), old.get("budget", "study")) != (model, sz.name, budget):
        raise InputError(f"{out} holds a study of model {old.get('model')!r}, size {old.get('size')!r}, budget "
                         f"{old.get('budget', 'study')!r}; use another --out for model {model!r}, size {sz.name!r}, "
                         f"budget {budget!r}")  # fmt: skip
    return tasks_


def _run_here(mine: list[tuple[tuple[str, str], RunConfig]], lm, tok, est: dict[int, float], total: float) -> list[str]:
    """Run the cells one after another on the loaded model; returns why each failed one failed."""
    from clmedit.models.fingerprint import fingerprint, fingerprint_diff

    bar = tqdm(total=round(total), unit="s", desc="study (estimated seconds of work)", dynamic_ncols=True)
    done_cases, failed, clean = 0, [], fingerprint(lm)
    for k, ((task, editor), config) in enumerate(mine, 1):
        t_run = time.perf_counter()
        try:
            summary = json.loads(
                (run(config, model=lm, tok=tok) / "summary.json").read_text(encoding="utf-8")
            )
        except Exception as err:  # one broken cell must not cost the rest of the grid
            failed.append(f"{editor} on {task}: {type(err).__name__}: {err}")
            log.error("run %d/%d FAILED: %s", k, len(mine), failed[-1])
            if fingerprint_diff(clean, fingerprint(lm)):  # the model is no longer the unedited one
                raise
            bar.update(round(est[id(config)]))
            continue
        counts, m = summary.get("counts") or {}, summary.get("metrics") or {}
        done_cases += int(counts.get("ok", 0)) + int(counts.get("failed", 0))
        bar.update(round(est[id(config)]))
        bar.set_postfix_str(f"runs {k}/{len(mine)}, cases {done_cases}")
        ems = [(m.get(g) or {}).get("em") for g in ("effectiveness", "generalization", "specificity")]
        log.info("run %d/%d done: %s on %s, %d cases (%d failed) in %.0f s; EM eff %s gen %s spec %s", k, len(mine),
                 editor, task, counts.get("ok", 0), counts.get("failed", 0), time.perf_counter() - t_run,
                 *("-" if v is None else f"{v:.1f}" for v in ems))  # fmt: skip
    bar.update(bar.total - bar.n)  # the estimate's remainder (the statistics) is done too
    bar.close()
    return failed
