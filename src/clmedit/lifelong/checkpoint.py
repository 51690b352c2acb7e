"""Checkpoints of a sequential run: when they fall, and scoring every edited case at one.

A checkpoint is a state of the sequence (the model after its first j apply calls). At each, every
case applied so far is scored with the study's protocol (`eval.protocol.evaluate_case`):
effectiveness is then the *retention* of the edit, however many edits came after it.

Specificity excludes neighbours that are edited inputs: a neighbour prompt of case i that is the
prompt or rephrase of a case edited so far (i itself included) is expected, by design, to give
that case's target now, not the unedited answer. Such neighbours are left out of case i's
specificity at that checkpoint (counted in `neighbours_excluded`); a case left with no neighbour
has no specificity score there and is not in the specificity mean (`specificity_cases` says how
many are).

Files: `checkpoints/edits-<n>.jsonl` (one durable line per scored case, so an interrupted
checkpoint resumes case by case) and `checkpoints/edits-<n>.state` (a digest of the model's
weights and module tree at that state: a replay that reaches the checkpoint again must match it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import set_seed

from clmedit.data.schema import EditCase
from clmedit.eval.protocol import evaluate_case
from clmedit.eval.scores import summarise
from clmedit.files import atomic_write_text
from clmedit.models.fingerprint import fingerprint
from clmedit.results import CaseRecord, read_case_file
from clmedit.run import records

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def checkpoint_states(batch_edits: list[int], requested: list[int]) -> dict[int, list[int]]:
    """Which states are checkpoints: {state j (after j apply calls): the requested counts it serves}.

    `batch_edits[j]` is the number of edits after apply call j+1. A requested count c is served by
    the first state holding at least c edits (with batches, a checkpoint can fall a few edits late);
    the last state is always one. Requested counts beyond the sequence are dropped.
    """
    if not batch_edits:
        return {}
    states: dict[int, list[int]] = {}
    for c in requested:
        j = next((j for j, n in enumerate(batch_edits, start=1) if n >= c), None)
        if j is not None:
            states.setdefault(j, []).append(c)
    states.setdefault(len(batch_edits), [])
    return dict(sorted(states.items()))


def checkpoint_path(out: Path, edits: int) -> Path:
    return out / CHECKPOINT_DIR / f"edits-{edits:06d}.jsonl"


def state_digest(model) -> str:
    """sha256 over the model's per-tensor checksums and module types (`models.fingerprint.fingerprint`)."""
    fp = fingerprint(model)
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def read_scored(path: Path) -> dict[str, CaseRecord]:
    """The case records of one checkpoint file, by case_id (a torn last line is skipped)."""
    if not path.is_file():
        return {}
    return {r.case_id: r for r in read_case_file(path)}


def check_state(path: Path, digest: str) -> bool:
    """Record `digest` as the checkpoint's state, or compare it with the recorded one.

    Returns False when the checkpoint was reached before with another model state.
    """
    state = path.with_suffix(".state")
    if state.is_file():
        return state.read_text(encoding="utf-8").strip() == digest
    atomic_write_text(state, digest + "\n")
    return True


def kept_neighbours(case: EditCase, edited_inputs: set[str]) -> tuple[EditCase, int]:
    """`case` without the neighbours whose prompt is an edited input; and how many were dropped."""
    kept = [n for n in case.neighbours if n.prompt.strip() not in edited_inputs]
    dropped = len(case.neighbours) - len(kept)
    return (case.model_copy(update={"neighbours": kept}) if dropped else case), dropped


def score_sample(case_ids: list[str], k: int | None, seed: int) -> set[str]:
    """The edited cases a checkpoint scores: all of `case_ids` (k None), else the k of them whose
    sha256 of `seed:case_id` is smallest.

    A fixed random sample: it depends on the seed and the ids only, never on the order or the
    checkpoint, so a case sampled at a later checkpoint is in every sample that could hold it, and a
    resumed run scores the same cases.
    """
    if k is None or len(case_ids) <= k:
        return set(case_ids)
    return set(sorted(case_ids, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())[:k])


def may_score(sequence: list[EditCase], counts: list[int], k: int | None, seed: int) -> list[EditCase]:
    """The cases of `sequence` that a checkpoint after `counts[i]` edits may score, in order: all of
    them without a sample (k None), else, per checkpoint, the 2k of its edited cases that come first
    by `score_sample`'s hash: its k, and k more for the places of failed edits (a failed edit leaves
    the sample and the next case by hash takes its place).

    Only these need the unedited model's neighbour answers: with 10,000 edits and a sample of 500,
    at most a fifth of the sequence instead of all of it.
    """
    if k is None:
        return list(sequence)
    ids = [c.case_id for c in sequence]
    wanted: set[str] = set()
    for n in counts:
        wanted |= score_sample(ids[:n], 2 * k, seed)
    return [c for c in sequence if c.case_id in wanted]


def edited_inputs(cases: list[EditCase]) -> set[str]:
    """The prompts and rephrases of edited cases, as neighbour prompts are compared with them."""
    return {text.strip() for c in cases for text in (c.prompt, c.rephrase)}


def score_checkpoint(
    model, tok, edited: list[tuple[int, EditCase]], path: Path, config, model_name: str
) -> int:
    """Score every (edit number, case) in `edited` (or its `config.score_sample` sample) not yet in
    `path`, appending one line per case; returns how many were scored now. Neighbours are compared
    with every edited input, sampled or not.

    The model is not changed. A case whose evaluation raises records its error (not retried on
    resume: the line marks it done at this checkpoint).
    """
    done = read_scored(path)
    sample = score_sample([c.case_id for _, c in edited], config.score_sample, config.seed)
    todo = [(n, c) for n, c in edited if c.case_id in sample and c.case_id not in done]
    inputs = edited_inputs([c for _, c in edited])
    bar = tqdm(todo, desc=f"checkpoint {path.stem}", unit="case", leave=False, dynamic_ncols=True)
    for number, case in bar:
        scored, dropped = kept_neighbours(case, inputs)
        rec = CaseRecord(case_id=case.case_id, task=case.task, edit=number, neighbours_excluded=dropped,
                         neighbours_kept=len(scored.neighbours))  # fmt: skip
        set_seed(config.seed)
        t0 = time.perf_counter()
        try:
            rec.scores = evaluate_case(model, tok, scored, model_name=model_name, fluency=config.fluency,
                                       seed=config.seed, budget=config.budget,
                                       evaluation=config.evaluation)  # fmt: skip
        except Exception as err:  # one bad case must not end the checkpoint
            rec.error = records.error_record(err)
            log.warning("checkpoint %s: case %s failed: %s", path.stem, case.case_id, rec.error["message"])
        rec.eval_seconds = time.perf_counter() - t0
        records.append_record(path, rec)
    return len(todo)


def summarise_checkpoint(recs: list[CaseRecord]) -> dict[str, Any]:
    """Means x100 over one checkpoint's cases: effectiveness (retention), generalization, fluency over
    every scored case; specificity over the cases that kept at least one neighbour."""
    ok = [r for r in recs if r.ok]
    scores = [r.scores for r in ok]
    with_neighbours = [r.scores for r in ok if (r.neighbours_kept if r.neighbours_kept is not None else 1) > 0]
    metrics = summarise(scores) if scores else {}
    if metrics:
        metrics["specificity"] = summarise(with_neighbours)["specificity"] if with_neighbours else None
    return {
        "metrics": metrics,
        "scored": len(ok),
        "failed": len(recs) - len(ok),
        "budget_short": sum(1 for s in scores if s.budget_short),  # EM cannot be 1 on a check
        "specificity_cases": len(with_neighbours),
        "neighbours_excluded": sum(r.neighbours_excluded or 0 for r in recs),
        "eval_seconds": sum(r.eval_seconds or 0.0 for r in recs),
    }
