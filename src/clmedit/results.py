"""Reading a run's results files: the per-case records (`cases*.jsonl`), `summary.json`, and a
sequential run's apply records (`edits.jsonl`).

Torch-free and shared by `run` (resume, summaries) and `report` (tables, figures, the HTML page), so
the report reads results files only and neither package imports the other's modules for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clmedit.data.schema import iter_jsonl

EDITS_FILE = "edits.jsonl"  # a sequential run's apply calls, one line each (run.sequential)
CASES_FILE = re.compile(r"cases(\.\d+of\d+)?\.jsonl")  # cases.jsonl, or cases.<i>of<n>.jsonl per shard
# a trained editor's `folds_protocol` in summary.json: the default, or the study's split (labelled in tables)
DISJOINT_FOLDS, OVERLAPPING_FOLDS = "probe-disjoint folds", "overlapping folds"


def read_records(out: str | Path) -> list[dict[str, Any]]:
    """One record per case_id over all shard files: its first success, else its latest failure."""
    seen: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in Path(out).glob("cases*.jsonl") if CASES_FILE.fullmatch(p.name)):
        for rec in iter_jsonl(path):
            if "case_id" not in rec:
                continue
            key = str(rec["case_id"])
            prev = seen.get(key)
            if prev is None or prev.get("error"):  # a success is never replaced
                seen[key] = rec
    return list(seen.values())


def load_summaries(run_dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """summary.json of each run directory (directories are searched recursively).

    Each summary gets `run_dir` set to the folder it was read from (a `run_dir` written inside the
    file is ignored: a results file never chooses where the report reads or writes).
    """
    found = []
    for d in run_dirs:
        d = Path(d)
        paths = [d] if d.is_file() else sorted(d.rglob("summary.json"))
        if not paths:
            raise FileNotFoundError(f"{d}: no summary.json found (is it a `clmedit run` output directory?)")
        for p in paths:
            try:
                summary = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(
                    f"{p}: not a readable summary.json ({err}); rerun the run or delete it"
                ) from None
            if not isinstance(summary, dict):
                raise ValueError(f"{p}: summary.json must hold a JSON object; rerun the run or delete it")
            summary["run_dir"] = str(p.parent)
            found.append(summary)
    return found


def read_edits(out: str | Path) -> list[dict[str, Any]]:
    """A sequential run's apply records in file order (a torn last line is skipped)."""
    path = Path(out) / EDITS_FILE
    return [r for r in iter_jsonl(path) if isinstance(r, dict) and "apply" in r] if path.is_file() else []


def per_edit_seconds(rec: dict[str, Any]) -> float | None:
    """Wall seconds of one apply record divided by the edits it made (None for a failed call)."""
    if rec.get("error") or rec.get("seconds") is None:
        return None
    return float(rec["seconds"]) / max(1, len(rec.get("case_ids") or []))
