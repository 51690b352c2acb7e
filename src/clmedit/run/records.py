"""The run's on-disk record: one JSON line per case, appended durably, and the summary built from it.

Invariant: a line in `cases*.jsonl` is written with one `write` call, then flushed and fsync'd, so a
crash loses at most the line being written; a torn last line is skipped on read (and its case redone).
The same files are the resume state: a case_id present in any `cases*.jsonl` of the run directory is done.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clmedit.results import read_records

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
    return {str(r["case_id"]) for r in read_records(out) if not r.get("error")}


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one line durably (a single write, flush, fsync).

    A line torn by an earlier crash is closed first, so it stays one malformed (skipped) line and
    never swallows this record.
    """
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


def fingerprint(model: nn.Module) -> dict[str, str]:
    """A checksum per parameter/buffer plus the type of every module.

    Each tensor's raw bytes are hashed (sha1, without copying on the CPU), so a restore that is not
    bitwise exact always changes it. Cost: one read of the weights (~0.3 s for 135M float32 params).
    """
    fp: dict[str, str] = {}
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            fp[name] = hashlib.sha1(memoryview(raw)).hexdigest()
    for name, module in model.named_modules():
        fp[f"module:{name}"] = type(module).__qualname__
    return fp


def fingerprint_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names whose checksum or module type changed (or that appeared / disappeared)."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarise_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means x100 (via eval.protocol.summarise), counts, failures, cost of the apply calls."""
    from clmedit.eval.protocol import CaseScores, summarise

    ok = [r for r in records if not r.get("error")]
    failed = [r for r in records if r.get("error")]
    scores = [CaseScores.model_validate({**r["scores"], "outputs": r.get("outputs", {})}) for r in ok]
    # Cost is per apply call: a batch of edits shares one call, so count each call once.
    calls: dict[Any, dict[str, Any]] = {}
    for r in ok:
        calls.setdefault((r.get("fold", 0), r.get("batch", r["case_id"])), r)
    secs = [float(r["seconds"]) for r in calls.values() if r.get("seconds") is not None]
    peaks = [int(r["peak_bytes"]) for r in calls.values() if r.get("peak_bytes") is not None]
    resident = [int(r["resident_peak_bytes"]) for r in calls.values() if r.get("resident_peak_bytes") is not None]
    return {
        "metrics": summarise(scores) if scores else {},
        "counts": {"cases": len(records), "ok": len(ok), "failed": len(failed), "apply_calls": len(calls),
                   "budget_short": sum(1 for s in scores if s.budget_short)},  # EM cannot be 1 on a check
        "failures": {
            "by_type": dict(Counter(r["error"]["type"] for r in failed)),
            "examples": [{"case_id": r["case_id"], **r["error"]} for r in failed[:10]],
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
        "tasks": sorted({str(r.get("task")) for r in records if r.get("task")}),
        "editor": _most_common(r.get("editor") for r in records),
        "model": _most_common(r.get("model") for r in records),
    }


def _most_common(values) -> str | None:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None
