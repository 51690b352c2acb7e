"""Writing a run's records: one JSON line per case (`results.CaseRecord`), appended durably.

Invariant: a line in `cases*.jsonl` is written with one `write` call, then flushed and fsync'd, so a
crash loses at most the line being written; a torn last line is skipped on read (and its case redone).
The same files are the resume state: a case recorded without error in any `cases*.jsonl` of the run
directory is done.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from clmedit.results import CaseRecord, read_records

# Longer tensors/lists in editor info are dropped, so one record stays a few KB (use RunConfig.keys
# to record keys on purpose).
MAX_LIST = 256


def cases_file(out: Path, shard: tuple[int, int]) -> Path:
    """`cases.jsonl`, or `cases.<i>of<n>.jsonl` per shard so concurrent shards never share a file."""
    i, n = shard
    return out / ("cases.jsonl" if n == 1 else f"cases.{i}of{n}.jsonl")


def done_ids(out: str | Path) -> set[str]:
    """Cases finished without error: a rerun skips them and retries the failed ones."""
    if not Path(out).is_dir():
        return set()
    return {r.case_id for r in read_records(out) if r.ok}


def append_record(path: Path, record: CaseRecord | dict[str, Any]) -> None:
    """Append one line durably (a single write, flush, fsync): a record as it is (without its unset
    fields), or a dict (a lifelong run's apply record).

    A line torn by an earlier crash is closed first, so it stays one malformed (skipped) line and
    never swallows this record.
    """
    if isinstance(record, BaseModel):
        record = record.model_dump(mode="json", exclude_none=True)
    line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def jsonable(value: Any, depth: int = 0) -> Any:
    """Editor info made JSON-safe: tensors/arrays to lists (small ones only), NaN to None, objects dropped."""
    if depth > 6:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64) if value.is_floating_point() else value.detach().cpu()
        if value.numel() > MAX_LIST:
            return None
        return jsonable(value.tolist(), depth + 1) if value.dim() else jsonable(value.item())
    if hasattr(value, "tolist") and hasattr(value, "shape"):  # numpy arrays and scalars
        return jsonable(torch.as_tensor(value), depth)
    if isinstance(value, dict):
        out = {str(k): jsonable(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_LIST:
            return None
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"), depth + 1)
    if isinstance(value, (Path, Enum)):
        return str(value)
    return None  # an editor's internal object (a codebook, a module): not part of the record


def error_record(err: BaseException) -> dict[str, str]:
    """An exception as a record's `error` field: type, message, the innermost frames."""
    return {"type": type(err).__name__, "message": str(err)[:2000], "where": traceback.format_exc(limit=-3)}
