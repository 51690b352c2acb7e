"""A run's summary: summary.json and table.md, computed from the run's case records in one place.

Every number is computed from the records in `cases*.jsonl` (all shards so far), so a summary is
always rebuildable from the folder; the settings records cannot give (config, hparams, skipped
lines) are kept from an earlier summary. The summary also carries what the report shows without
asking the editors: the row `label` and its table position `order`.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase
from clmedit.editors.registry import editor_label, table_order
from clmedit.eval.scores import summarise
from clmedit.files import atomic_write_text
from clmedit.results import CaseRecord, read_records
from clmedit.run import records
from clmedit.run.folds import (
    fold_training,
    protocol,
    recorded_fit_seconds,
    scored_cases,
    split_folds,
    unprobed_for,
)
from clmedit.run.settings import RunConfig
from clmedit.run.setup import RunSetup


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def row_facts(editor_name: str) -> dict[str, Any]:
    """What the report shows of an editor without asking the registry: its label and table position."""
    return {"label": editor_label(editor_name), "order": table_order(editor_name)[0]}


def summarise_records(recs: list[CaseRecord]) -> dict[str, Any]:
    """Means x100 (eval.scores.summarise), counts, failures, cost of the apply calls."""
    ok = [r for r in recs if r.ok]
    failed = [r for r in recs if not r.ok]
    scores = [r.scores for r in ok]
    # Cost is per apply call: a batch of edits shares one call, so count each call once.
    calls: dict[Any, CaseRecord] = {}
    for r in ok:
        calls.setdefault((r.fold or 0, r.batch or r.case_id), r)
    secs = [r.seconds for r in calls.values() if r.seconds is not None]
    peaks = [r.peak_bytes for r in calls.values() if r.peak_bytes is not None]
    resident = [r.resident_peak_bytes for r in calls.values() if r.resident_peak_bytes is not None]
    return {
        "metrics": summarise(scores) if scores else {},
        "counts": {"cases": len(recs), "ok": len(ok), "failed": len(failed), "apply_calls": len(calls),
                   "budget_short": sum(1 for s in scores if s.budget_short)},  # EM cannot be 1 on a check
        "failures": {
            "by_type": dict(Counter((r.error or {}).get("type", "?") for r in failed)),
            "examples": [{"case_id": r.case_id, **(r.error or {})} for r in failed[:10]],
        },
        "cost": {
            "median_seconds": _median(secs),
            "mean_seconds": statistics.fmean(secs) if secs else None,
            "total_seconds": sum(secs),
            "median_peak_bytes": _median([float(p) for p in peaks]),
            "max_peak_bytes": max(peaks) if peaks else None,
            "mean_peak_bytes": statistics.fmean(peaks) if peaks else None,
            "mean_resident_peak_bytes": statistics.fmean(resident) if resident else None,
        },
        "tasks": sorted({r.task for r in recs if r.task}),
        "editor": _most_common(r.editor for r in recs),
        "model": _most_common(r.model for r in recs),
    }


def _most_common(values) -> str | None:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def fold_facts(config: RunConfig, editor, cases: list[EditCase], data: Path) -> dict[str, Any]:
    """For a trained editor's summary: the fold protocol, per test fold the training inputs removed and
    the data's unprobed inputs offered to `fit` (data.unprobed, the fold's probes removed), and the
    seconds each fold's fit took where its saved part records them."""
    if not editor.trainable or config.folds < 2:
        return {}
    secs = {str(k): recorded_fit_seconds(Path(config.out) / f"fold{k}") for k in range(config.folds)}
    folds = split_folds(cases, config.folds, config.seed)
    return {"folds_protocol": protocol(config),
            "fold_training": fold_training(cases, config.folds, config.seed, config.folds_overlap),
            "unprobed_offered": {str(k): len(unprobed_for(data, fold)) for k, fold in enumerate(folds)},
            "fit_seconds": {k: v for k, v in secs.items() if v is not None}}  # fmt: skip


def write_run_summary(config: RunConfig, setup: RunSetup) -> dict[str, Any]:
    """The run's summary.json over every shard's records of the cases it scores."""
    ids = {c.case_id for c in scored_cases(setup.cases, config)}
    return write_summary(setup.out, config, case_ids=ids, hparams=setup.hparams,
                         skipped_lines=setup.skip_info, **row_facts(setup.editor.name),
                         **fold_facts(config, setup.editor, setup.cases, setup.data))  # fmt: skip


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
    recs = [r for r in read_records(out) if case_ids is None or r.case_id in case_ids]
    summary.update(summarise_records(recs))
    if config is not None:
        summary["config"] = config.model_dump(mode="json")
    summary.update(records.jsonable(extra))
    atomic_write_text(path, json.dumps(summary, indent=2))
    atomic_write_text(out / "table.md", render_markdown([summary]) + "\n")
    return summary
