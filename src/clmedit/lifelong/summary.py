"""summary.json and table.md of a sequential run, rebuilt from its files (edits.jsonl, checkpoints/).

Written at the end of every run, finished or not, so they always describe what the folder holds.
`summary["mode"] == "sequential"` tells the report (and `clmedit.results` readers) what it is; its
`metrics` are those of the last complete checkpoint (Table IV columns), and `sequential.checkpoints`
lists every checkpoint of the plan: its edit count, means x100, counts, the median seconds per edit
of the calls since the previous checkpoint and the resident memory after its last call.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase
from clmedit.files import atomic_write_text
from clmedit.lifelong import checkpoint as ckpt
from clmedit.results import per_edit_seconds, read_edits
from clmedit.run.folds import protocol, split_folds, training_half
from clmedit.run.summary import row_facts


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def plan_calls(recorded: list[dict[str, Any]], batches: list[list[EditCase]]) -> list[dict[str, Any]]:
    """The leading apply records that are this plan's calls (same index, same cases, in order)."""
    calls = []
    for j, rec in enumerate(recorded[: len(batches)]):
        if rec.get("apply") != j or rec.get("case_ids") != [c.case_id for c in batches[j]]:
            break
        calls.append(rec)
    return calls


def checkpoint_rows(
    out: Path, batches: list[list[EditCase]], states: dict[int, list[int]], calls: list[dict[str, Any]],
    sample: int | None = None, seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """One summary row per checkpoint state of the plan (see module doc); `calls` are its apply records.
    With `sample` K, a row summarises the checkpoint's fixed sample of K edited cases (ckpt.score_sample)."""
    rows, previous = [], 0
    for j, requested in states.items():
        edits = sum(len(b) for b in batches[:j])
        done = calls[:j]
        applied = [c for r in done if not r.get("error") for c in r.get("case_ids") or []]
        wanted = ckpt.score_sample(applied, sample, seed)
        scored = ckpt.read_scored(ckpt.checkpoint_path(out, edits))
        recs = [r for case_id, r in scored.items() if case_id in wanted]
        row: dict[str, Any] = {"edits": edits, "requested": requested, "apply_calls": j, "applied": len(applied)}
        row["complete"] = len(done) == j and len(recs) >= len(wanted)
        row.update(ckpt.summarise_checkpoint(recs) if recs else {"metrics": {}, "scored": 0})
        secs = [s for r in calls[previous:j] if (s := per_edit_seconds(r)) is not None]
        row["seconds_per_edit"] = _median(secs)
        row["rss_bytes"] = done[-1].get("rss_bytes") if len(done) == j else None
        rows.append(row)
        previous = j
    return rows


def write_sequential_summary(
    out: Path, config, setup, batches: list[list[EditCase]], states: dict[int, list[int]],
    unusable: list[dict[str, Any]], model_name: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Rebuild summary.json and table.md from the folder's files (atomically); returns the summary."""
    from clmedit.report.sequential import render_checkpoints

    calls = plan_calls(read_edits(out), batches)
    ok = [r for r in calls if not r.get("error")]
    failed = [r for r in calls if r.get("error")]
    rows = checkpoint_rows(out, batches, states, calls, config.score_sample, config.seed)
    last = next((r for r in reversed(rows) if r["complete"]), None)
    summary = {
        "mode": "sequential",
        "editor": setup.editor.name,
        **row_facts(setup.editor.name),
        "model": model_name,
        "tasks": sorted({c.task for b in batches for c in b}),
        "config": config.model_dump(mode="json"),
        "hparams": setup.hparams,
        "skipped_lines": setup.skip_info,
        "counts": {
            "cases": sum(len(b) for b in batches),
            "edits": sum(len(r["case_ids"]) for r in calls),
            "applied": sum(len(r["case_ids"]) for r in ok),
            "failed": sum(len(r["case_ids"]) for r in failed),
            "apply_calls": len(calls),
        },
        "failures": {
            "by_type": dict(Counter(r["error"]["type"] for r in failed)),
            "examples": [{"case_ids": r["case_ids"][:5], **r["error"]} for r in failed[:10]],
        },
        "metrics": last["metrics"] if last else {},
        "cost": _cost(calls, ok),
        "sequential": {
            "edits_requested": config.sequential,
            "batch_size": config.batch_size,
            # the fixed random sample each checkpoint scores (None: every edited case)
            "score_sample": {"size": config.score_sample, "seed": config.seed} if config.score_sample else None,
            "complete": bool(rows) and all(r["complete"] for r in rows),
            "unusable": unusable,
            "checkpoints": rows,
        },
    }
    if setup.editor.trainable and config.folds > 1:  # the sequence is fold 0; the editor fitted on the rest
        summary["folds_protocol"] = protocol(config)
        folds = split_folds(setup.cases, config.folds, config.seed)
        summary["fold_training"] = {"0": training_half(folds, 0, config.folds_overlap)[1]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "table.md", render_checkpoints([summary]) + "\n")
    return summary


def _cost(calls: list[dict[str, Any]], ok: list[dict[str, Any]]) -> dict[str, Any]:
    """The apply calls' cost: seconds (per call and per edit), own peaks, resident memory from first to last."""
    secs = [float(r["seconds"]) for r in ok]
    edit_secs = [s for r in ok if (s := per_edit_seconds(r)) is not None]
    peaks = [int(r["peak_bytes"]) for r in ok if r.get("peak_bytes") is not None]
    rss = [r for r in calls if r.get("rss_bytes") is not None]
    start = calls[0].get("rss_before_bytes") if calls else None
    return {
        "median_seconds": _median(secs),
        "mean_seconds": statistics.fmean(secs) if secs else None,
        "total_seconds": sum(secs),
        "median_seconds_per_edit": _median(edit_secs),
        "max_peak_bytes": max(peaks) if peaks else None,
        "mean_peak_bytes": statistics.fmean(peaks) if peaks else None,
        "rss_start_bytes": start,
        "rss_end_bytes": rss[-1]["rss_bytes"] if rss else None,
        "rss_growth_bytes": rss[-1]["rss_bytes"] - start if rss and start is not None else None,
    }
