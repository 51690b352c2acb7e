"""A run's results files: the per-case record (`CaseRecord`, one line of `cases*.jsonl` or of a
lifelong checkpoint file), `summary.json`, and a sequential run's apply records (`edits.jsonl`).

Torch-free and shared by `run` (writes, resume, summaries), `lifelong` and `report` (tables,
figures, the HTML page), so the report reads results files only and neither package imports the
other's modules for it. A case line is a `CaseRecord` as it is, written and read; lines written
before the scores kept their texts (`outputs` beside `scores`, not in them) read as the same record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from clmedit.data.schema import iter_jsonl
from clmedit.eval.scores import CaseScores

EDITS_FILE = "edits.jsonl"  # a sequential run's apply calls, one line each (lifelong.sequence)
CASES_FILE = re.compile(r"cases(\.\d+of\d+)?\.jsonl")  # cases.jsonl, or cases.<i>of<n>.jsonl per shard
# a trained editor's `folds_protocol` in summary.json: the default, or the study's split (labelled in tables)
DISJOINT_FOLDS, OVERLAPPING_FOLDS = "probe-disjoint folds", "overlapping folds"


class CaseRecord(BaseModel):
    """One edited case as a run records it: its scores, or the error that stopped it, and the cost
    of the apply call it was in (a batch shares one call: `fold` and `batch` name it).

    A lifelong checkpoint's line is the same record with `edit` (its place in the sequence) and the
    neighbours kept and excluded (lifelong.checkpoint); cost fields are then absent.
    """

    model_config = ConfigDict(extra="ignore")

    case_id: str
    task: str | None = None
    scores: CaseScores | None = None  # None when `error` is set
    error: dict[str, str] | None = None  # type, message (and where: the innermost frames)
    eval_seconds: float | None = None
    seconds: float | None = None  # the apply call's wall seconds
    peak_bytes: int | None = None  # the apply call's own peak memory
    resident_peak_bytes: int | None = None
    batch_size: int | None = None
    info: dict[str, Any] = {}  # the editor's facts about the edit (JSON-safe)
    fold: int | None = None
    batch: str | None = None
    editor: str | None = None
    model: str | None = None
    edit: int | None = None  # lifelong: the case's edit number
    neighbours_excluded: int | None = None  # lifelong: neighbours that are edited inputs
    neighbours_kept: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_form(cls, data: Any) -> Any:
        """Lines written before this type kept the generated texts beside the scores (`outputs`);
        a numeric case_id is its text."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("case_id"), int):
            data["case_id"] = str(data["case_id"])
        outputs = data.pop("outputs", None)
        if outputs is not None and isinstance(data.get("scores"), dict) and "outputs" not in data["scores"]:
            data["scores"] = {**data["scores"], "outputs": outputs}
        return data

    @property
    def ok(self) -> bool:
        return self.error is None and self.scores is not None


def read_case_file(path: str | Path) -> list[CaseRecord]:
    """The records of one case file in order; a torn or invalid line is skipped (its case redone)."""
    found = []
    for obj in iter_jsonl(path):
        try:
            found.append(CaseRecord.model_validate(obj))
        except ValidationError:
            continue
    return found


def read_records(out: str | Path) -> list[CaseRecord]:
    """One record per case_id over all shard files: its first success, else its latest failure."""
    seen: dict[str, CaseRecord] = {}
    for path in sorted(p for p in Path(out).glob("cases*.jsonl") if CASES_FILE.fullmatch(p.name)):
        for rec in read_case_file(path):
            prev = seen.get(rec.case_id)
            if prev is None or not prev.ok:  # a success is never replaced
                seen[rec.case_id] = rec
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
