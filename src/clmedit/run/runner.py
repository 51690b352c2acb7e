"""One run: one model x one editor x one dataset, edited and evaluated case by case.

For each batch of `batch_size` cases (1 = the study's single edits):

    seed -> result = editor.apply(model, tok, batch) -> evaluate_case(model, tok, c) for c in batch
         -> result.restore()   (always, in `finally`)

Invariants: before every apply the model is bitwise the unedited model (checked after a failure,
and after every restore with `verify_restore`); each finished case is one durable line in
`cases.jsonl`, so a rerun skips it; a failing case records its error and the run goes on.
Neighbour reference answers are computed once per model before any edit and cached beside the data.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import traceback
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from clmedit.data.schema import EditCase, atomic_write_text, read_cases
from clmedit.run import records
from clmedit.run.prepare import ensure_base_answers, resolve_data

log = logging.getLogger(__name__)


class RunConfig(BaseModel):
    """Everything that defines a run; saved into summary.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("smollm2-135m", description="model name, HF id, local path or GGUF file")
    editor: str = Field("none", description="registered editor name ('none' = the unedited row)")
    data: str = Field(description="case JSONL path, or 'default:cnle' / 'default:csne'")
    out: Path = Field(description="run directory (cases.jsonl, summary.json, table.md)")
    limit: int | None = Field(None, gt=0, description="use the first N cases (before sharding)")
    preset: str | None = Field(None, description="hparams preset name or YAML path; default: by model")
    hparams: dict[str, Any] = Field(default_factory=dict, description="hparams overrides")
    seed: int = Field(0, description="seed fixed before every apply and evaluation")
    shard: str = Field("0/1", description="'i/n': run every n-th case starting at i")
    batch_size: int = Field(1, gt=0, description="cases per apply call (1 = single edits)")
    folds: int = Field(1, ge=1, description="k-fold protocol for trainable editors (the study: 2)")
    fluency: bool = Field(True, description="compute the fluency metric (sampling; the slowest part)")
    device: str | None = Field(None, description="torch device; default: cuda if available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto: float32 on CPU, the checkpoint's dtype on GPU"
    )
    verify_restore: bool = Field(False, description="debug: checksum the weights after every restore")
    keys: bool = Field(False, description="record keys and key distances (editors with prompt_keys)")

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, v: str) -> str:
        parse_shard(v)
        return v

    @property
    def shard_tuple(self) -> tuple[int, int]:
        return parse_shard(self.shard)


def parse_shard(spec: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"shard must look like 'i/n' with 0 <= i < n (e.g. '0/4'), got {spec!r}")
    return int(m[1]), int(m[2])


def shard_cases(cases: list[EditCase], shard: tuple[int, int]) -> list[EditCase]:
    """Every n-th case from i: shards are disjoint and their union is all cases."""
    i, n = shard
    return cases[i::n]


def split_folds(cases: list[EditCase], folds: int, seed: int = 0) -> list[list[EditCase]]:
    """Split cases into `folds` near-equal parts by a seeded shuffle (the study: 2 folds, 1:1).

    Fold k is evaluated with an editor fitted on all other folds; each case is in exactly one fold.
    """
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    return [[cases[j] for j in sorted(order[k::folds])] for k in range(folds)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def _make_editor(config: RunConfig):
    from clmedit.config import preset_for_model
    from clmedit.editors.base import get_editor

    preset = config.preset or (config.model if preset_for_model(config.model) else None)
    return get_editor(config.editor, preset=preset, **config.hparams)


def load_model_for(name: str, device: str | None = None, dtype: str = "auto"):
    """(model, tok) on `device`, default cuda when available, in `dtype`; the model in eval mode."""
    from clmedit.models.load import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model(name, device=device, dtype=dtype)


def _error(err: BaseException) -> dict[str, str]:
    return {"type": type(err).__name__, "message": str(err)[:2000], "where": traceback.format_exc(limit=-3)}


def run(config: RunConfig, model=None, tok=None, editor=None) -> Path:
    """Run the grid cell `config` (resuming if its directory has records); returns the run directory.

    `model`/`tok` may be passed to reuse a loaded model across runs (it must be the unedited model);
    `editor` may be an Editor instance not in the registry (then `config.editor` is only a label).
    """
    from clmedit.eval.protocol import evaluate_case
    from clmedit.models.text import model_name as name_of

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = resolve_data(config.data, seed=config.seed)
    cases = read_cases(data)[: config.limit]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{data}: case_id values are not unique; the runner needs them to resume")
    mine = shard_cases(cases, config.shard_tuple)
    done = records.done_ids(out)
    editor = editor if editor is not None else _make_editor(config)
    if editor.trainable and config.folds < 2:
        raise ValueError(f"editor {editor.name!r} is trained on a split: run it with --folds 2")
    if model is None:
        model, tok = load_model_for(config.model, config.device, config.dtype)
    mname = name_of(model)
    folds = split_folds(cases, config.folds, config.seed) if config.folds > 1 else [cases]
    todo = [c for c in mine if c.case_id not in done]
    log.info("%s on %s: %d of %d cases to do", editor.name, data.name, len(todo), len(mine))
    if todo:
        ensure_base_answers(model, tok, todo, data, mname)
    clean = records.fingerprint(model)
    path = records.cases_file(out, config.shard_tuple)
    todo_ids = {c.case_id for c in todo}
    bar = tqdm(total=len(todo), desc=f"{editor.name}/{data.stem}", unit="case", dynamic_ncols=True)
    for k, fold in enumerate(folds):
        fold_todo = [c for c in fold if c.case_id in todo_ids]
        if not fold_todo:
            continue
        if editor.trainable:
            train = [c for j, f in enumerate(folds) if j != k for c in f]
            fit_fold(editor, model, tok, train, out / f"fold{k}")
        for start in range(0, len(fold_todo), config.batch_size):
            batch = fold_todo[start : start + config.batch_size]
            batch_id = f"{k}:{start // config.batch_size}" if config.batch_size > 1 else batch[0].case_id
            for rec in _edit_and_score(config, editor, model, tok, batch, mname, clean, evaluate_case):
                rec.update(fold=k, batch=batch_id, editor=editor.name, model=mname)
                records.append_record(path, rec)
                bar.update(1)
    bar.close()
    write_summary(out, config, case_ids=set(ids), hparams=editor.hparams)
    return out


def fit_fold(editor, model, tok, train: list[EditCase], fold_dir: Path) -> None:
    """Fit a trainable editor on the other folds, or load what an earlier (interrupted) run saved."""
    if (fold_dir / "DONE").is_file():
        editor.load(fold_dir)
        return
    log.info("fitting %s on %d cases", editor.name, len(train))
    editor.fit(model, tok, train)
    try:
        editor.save(fold_dir)
        atomic_write_text(fold_dir / "DONE", "")
    except NotImplementedError:
        pass


def _edit_and_score(config, editor, model, tok, batch, mname, clean, evaluate_case) -> list[dict[str, Any]]:
    """Apply one batch, score each case, always restore. Returns one record per case."""
    seed_everything(config.seed)
    result, failure = None, None
    recs: list[dict[str, Any]] = []
    try:
        analysis = {c.case_id: key_analysis(editor, model, tok, c) for c in batch} if config.keys else {}
        result = editor.apply(model, tok, batch)
        for case in batch:
            seed_everything(config.seed)
            t0 = time.perf_counter()
            scores = evaluate_case(
                model, tok, case, model_name=mname, fluency=config.fluency, seed=config.seed
            )
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
        failure = _error(err)
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
        rec["info"] = {**info, **(analysis.get(rec["case_id"]) or {})}
    return recs


def key_analysis(editor, model, tok, case: EditCase) -> dict[str, Any] | None:
    """Keys of prompt, rephrase and neighbours (unedited model) and their distances to the prompt's.

    For editors with `prompt_keys` (GRACE family); the data of the distance-envelope and PCA figures.
    Distance as the editor measures it: L2, or 1 - cosine when hparams.dist_fn == 'cos'.
    """
    fn = getattr(editor, "prompt_keys", None)
    if fn is None:
        return None
    k = fn(model, tok, [case.prompt, case.rephrase, *(n.prompt for n in case.neighbours)]).float().cpu()
    if getattr(editor.hparams, "dist_fn", "euc") == "cos":
        d = 1 - torch.nn.functional.cosine_similarity(k[1:], k[:1], dim=-1)
    else:
        d = torch.linalg.vector_norm(k[1:] - k[:1], dim=-1)
    d = d.tolist()

    def short(v: torch.Tensor) -> list[float]:
        return [float(f"{x:.4g}") for x in v.tolist()]

    return {
        "distances": {"rephrase": d[0], "neighbours": d[1:], "radius": getattr(editor.hparams, "eps", None)},
        "keys": {"prompt": short(k[0]), "rephrase": short(k[1]), "neighbours": [short(x) for x in k[2:]]},
    }


def write_summary(
    out: Path, config: RunConfig | None = None, case_ids: set[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """summary.json and table.md from the records in `out` (all shards so far), written atomically.

    `case_ids` restricts it to the run's selection (a rerun with a smaller --limit summarises only
    those). Keys of an earlier summary that records cannot give (config, hparams) are kept.
    """
    from clmedit.report.tables import render_markdown

    path = out / "summary.json"
    summary = {k: v for k, v in (json.loads(path.read_text()) if path.is_file() else {}).items()
               if k in ("config", "hparams")}  # fmt: skip
    recs = [r for r in records.read_records(out) if case_ids is None or str(r["case_id"]) in case_ids]
    summary.update(records.summarise_records(recs))
    if config is not None:
        summary["config"] = config.model_dump(mode="json")
    summary.update(records.jsonable(extra))
    atomic_write_text(path, json.dumps(summary, indent=2))
    atomic_write_text(out / "table.md", render_markdown([summary]) + "\n")
    return summary
