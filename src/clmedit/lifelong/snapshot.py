"""Snapshots of a sequential run: the edit after its first j apply calls, saved as a fix file.

A rerun of an interrupted 10,000-edit run would otherwise re-apply every recorded call (hours for
GRACE); from a snapshot it loads the edit (seconds, `Editor.load_edit`: nothing is applied or
trained) and re-applies only the calls recorded after it. One snapshot is kept,
`checkpoints/snapshot/` (a fix file, `fixes/artifact.py`, plus `position.json`: how many calls and
edits it holds, their case ids and the model's state digest). It is replaced whole: written beside
it under a temporary name, then swapped in, so an interruption leaves the old one or the new one.

A snapshot is used only when it is the run's own: the same base model (the fix file's fingerprint),
the same editor kind, the same cases in the same order as the recorded calls it covers, and, once
loaded, the same model state digest it was saved with. Otherwise the run falls back to re-applying
from the start, which is always correct (and checked at every checkpoint).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase
from clmedit.editors.base import Editor, EditResult
from clmedit.errors import ClmeditError
from clmedit.files import atomic_write_text
from clmedit.fixes.artifact import BaseModelRecord, load_edited, write_fix_file
from clmedit.lifelong.checkpoint import CHECKPOINT_DIR, state_digest

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot"
POSITION = "position.json"


def snapshot_dir(out: Path) -> Path:
    return out / CHECKPOINT_DIR / SNAPSHOT


def save_snapshot(out: Path, model, editor: Editor, applied: list[EditCase], base: BaseModelRecord,
                  calls: int, edits: int) -> Path:  # fmt: skip
    """Save the edit in `model` (the first `calls` apply calls, `edits` edits; `applied`: the cases in
    it, in order) as the run's snapshot, replacing the one before."""
    final = snapshot_dir(out)
    staging, old = final.with_name(SNAPSHOT + ".new.tmp"), final.with_name(SNAPSHOT + ".old.tmp")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    write_fix_file(model, editor, applied, staging, base, check=False)
    position = {"calls": calls, "edits": edits, "digest": state_digest(model),
                "case_ids": [c.case_id for c in applied]}  # fmt: skip
    atomic_write_text(staging / POSITION, json.dumps(position))  # last: a staging folder with it is whole
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_position(out: Path) -> dict[str, Any] | None:
    """The saved snapshot's position, or None when there is none (or it is unreadable)."""
    for folder in (snapshot_dir(out), snapshot_dir(out).with_name(SNAPSHOT + ".old.tmp")):
        try:
            position = json.loads((folder / POSITION).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(position, dict) and isinstance(position.get("calls"), int):
            return {**position, "folder": str(folder)}
    return None


def load_snapshot(out: Path, model, tok, editor: Editor, applied_ids: Callable[[int], list[str]], limit: int
                  ) -> tuple[EditResult, int] | None:  # fmt: skip
    """Put the run's snapshot into the unedited `model` with the run's own `editor`: (its result,
    the number of calls it holds), or None when there is no usable one. `applied_ids(j)`: the case
    ids in the model after the first j recorded calls; `limit`: the most calls a snapshot may hold
    (the first checkpoint still to score, or the recorded calls)."""
    position = read_position(out)
    if position is None:
        return None
    calls = position["calls"]
    if not 0 < calls <= limit or position.get("case_ids") != applied_ids(calls):
        log.info("the snapshot (%d calls) is not on this run's recorded path; re-applying from the start", calls)
        return None
    try:
        result = load_edited(model, position["folder"], tok, editor=editor)
    except (ClmeditError, OSError) as err:
        log.warning("the snapshot could not be loaded (%s); re-applying from the start", err)
        return None
    if state_digest(model) != position.get("digest"):
        result.restore()
        log.warning("the loaded snapshot is not the model it was saved from; re-applying from the start")
        return None
    return result, calls
