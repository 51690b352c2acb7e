"""A run folder belongs to one configuration, and one process at a time writes each shard's file.

`run.json` holds the run's identity: every setting the results depend on (model, editor, the
hparams after preset and overrides, a digest of the cases' content, seed, folds, batch size,
fluency, ...), written when the folder's first run starts. A later run into the folder resumes only
with the same identity (a different --limit or --shard just selects more or other cases; device
and threads do not matter); otherwise it is refused with the fields that differ, so results are
never relabelled with settings they were not made with. `overwrite=True` clears the folder's
results first (give it to one process only: it also discards other shards' files).

`written.json` lists the names the folder's runs created (recorded before they are written), and
`overwrite` removes only those: a file of the user's, an input among them, is never deleted. A
folder that holds a result-named entry no run recorded, or other files and no run.json, is refused
(`check_folder`, before the model loads); a folder an older clmedit made (run.json, no written.json)
is adopted with the results it holds.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from filelock import Timeout

from clmedit.data.schema import EditCase
from clmedit.errors import ClmeditError, IntegrityError
from clmedit.files import atomic_write_text, locked
from clmedit.results import CASES_FILE

IDENTITY_FILE = "run.json"
WRITTEN_FILE = "written.json"
# RunConfig fields that select cases or place the work, never change a case's result; `data`,
# `preset` and `hparams` are compared through the content digest and the resolved hparams.
NOT_IDENTITY = frozenset(
    {
        "out",
        "limit",
        "shard",
        "device",
        "verify_restore",
        "data",
        "preset",
        "hparams",
        "sequential",
        "checkpoints",
        "score_sample",
        "snapshot_every",  # where a rerun may resume from, not what it computes
        "eval_limit",
        "folds_overlap",
        "evaluation",  # both paths give the same outputs
    }
)
# The files and folders a sequential run writes (lifelong.sequence); they are results like cases*.jsonl.
SEQUENTIAL_RESULTS = ("edits.jsonl", "checkpoints")
_RESULT_NAME = re.compile(
    rf"{CASES_FILE.pattern}|fold\d+|summary\.json|table\.md|run\.json|written\.json|edits\.jsonl|checkpoints"
)


class RunLockedError(ClmeditError):
    """Another process is writing the same shard of the same run folder."""


def data_digest(cases: list[EditCase]) -> str:
    """sha256 of what the cases ask (ids, prompts, targets, rephrases, neighbour prompts), not of cached answers."""
    h = hashlib.sha256()
    for c in cases:
        item = [c.case_id, c.task, c.prompt, c.target, c.rephrase, [n.prompt for n in c.neighbours]]
        h.update(json.dumps(item, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def identity(config: Any, editor_name: str, hparams: dict[str, Any], cases: list[EditCase]) -> dict[str, Any]:
    """The settings a run folder's results depend on (see NOT_IDENTITY for what is left out).

    A sequential run adds `mode: sequential` (how many edits and where the checkpoints fall only
    select how far it goes: every checkpoint's results are those of the same edit sequence), so a
    folder of single-edit results is never continued as a sequential run, or the other way round.
    """
    fields = {k: v for k, v in config.model_dump(mode="json").items() if k not in NOT_IDENTITY}
    if fields.get("budget") == "study":  # folders written before the setting existed used this rule
        del fields["budget"]
    if getattr(config, "folds", 1) > 1:  # folds are drawn from the first `limit` cases: another limit,
        fields["limit"] = config.limit  # other training halves, other results for the same case
        fields["folds_overlap"] = config.folds_overlap  # (absent from folders fitted before it existed)
    mode = {"mode": "sequential"} if getattr(config, "sequential", None) else {}
    return {**fields, **mode, "editor": editor_name, "hparams": hparams, "data_digest": data_digest(cases)}


def is_result_name(name: str) -> bool:
    """True for a name a run writes in its folder (cases*.jsonl, summary.json, fold<k>/, ...)."""
    return _RESULT_NAME.fullmatch(name) is not None


def _trained_fold(p: Path) -> bool:  # written by `clmedit train --out RUN/fold<k>`, read by the run
    return p.is_dir() and re.fullmatch(r"fold\d+", p.name) is not None


def _recorded(out: Path) -> set[str] | None:
    """The names written.json lists; for a folder an older clmedit made (run.json only), the results
    it holds; None for a folder no run has claimed."""
    path = out / WRITTEN_FILE
    if path.is_file():
        try:
            names = json.loads(path.read_text(encoding="utf-8"))["names"]
            return {n for n in names if isinstance(n, str) and is_result_name(n)}
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"{path} is unreadable; move the folder's files elsewhere and rerun") from None
    if (out / IDENTITY_FILE).is_file():
        return {p.name for p in out.iterdir() if is_result_name(p.name)}
    return None


def check_folder(out: str | Path, inputs: list[Path]) -> Path:
    """Refuse an --out a run must not write into (see the module doc); creates nothing."""
    from clmedit.outputs import check_output_dir, foreign_entries

    def ours(folder: Path) -> bool:
        return _recorded(folder) is not None or not foreign_entries(folder, _trained_fold)

    out = check_output_dir(out, inputs, is_result_name)
    if not out.is_dir():
        return out
    recorded = _recorded(out) or set()
    stray = sorted(p.name for p in out.iterdir() if is_result_name(p.name) and not _trained_fold(p))
    stray = [n for n in stray if n not in recorded]
    if stray:
        raise IntegrityError(
            f"--out {out} holds {', '.join(stray[:3])}, which no clmedit run recorded writing there; "
            "move it away or give another --out (--overwrite removes only what runs wrote)"
        )
    return check_output_dir(out, ours=ours)


def _record(out: Path, names: set[str]) -> None:
    atomic_write_text(out / WRITTEN_FILE, json.dumps({"names": sorted(names)}, indent=2))


def _results(out: Path) -> list[Path]:
    """The results this folder's runs wrote (only what written.json records)."""
    return [out / n for n in sorted(_recorded(out) or ()) if (out / n).exists() and n != WRITTEN_FILE]


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(saved.keys() | now.keys()):
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        if key == "hparams" and saved.get("editor") != now.get("editor"):
            diffs.append("hparams: those of another editor")
        elif key == "hparams" and isinstance(old, dict) and isinstance(new, dict):
            diffs += [f"hparams.{k}: {old.get(k)!r} -> {new.get(k)!r}"
                      for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]  # fmt: skip
        elif key == "data_digest":
            diffs.append("data: the cases' content differs")
        else:
            diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def claim(out: Path, ident: dict[str, Any], about: dict[str, Any], overwrite: bool = False,
          writes: str = "cases.jsonl") -> None:  # fmt: skip
    """Make `out` this configuration's folder: write run.json, or check it matches; see module doc.

    `writes` is the file this process appends to; it, and everything else a run may write here, is
    recorded in written.json before anything is written. A run.json whose folder holds nothing yet
    (its first run stopped before any result, e.g. on a mistyped model name) is simply replaced.
    """
    path = out / IDENTITY_FILE
    with locked(path):  # shards starting together agree on one run.json
        check_folder(out, [])
        if overwrite:
            for p in _results(out):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        names = set() if overwrite else _recorded(out) or set()
        may_write = {writes, IDENTITY_FILE, WRITTEN_FILE, "summary.json", "table.md", *SEQUENTIAL_RESULTS}
        may_write |= {f"fold{k}" for k in range(int(ident.get("folds") or 1))}
        _record(out, names | {n for n in may_write if n in names or not (out / n).exists()})
        results = [p for p in _results(out) if p.name != IDENTITY_FILE and (p.is_dir() or p.stat().st_size)]
        if path.is_file() and results:
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))["identity"]
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(
                    f"{path} is unreadable; rerun with --overwrite to start the folder afresh"
                ) from None
            diffs = _differences(saved, ident)
            if diffs:
                raise IntegrityError(
                    f"{out} holds results of another configuration ({'; '.join(diffs)}); "
                    "use another --out, or --overwrite to discard those results"
                )
            return
        if any(p.is_file() for p in results):  # (a fold<k>/ made by `clmedit train` is fine)
            raise IntegrityError(
                f"{out} holds results but no {IDENTITY_FILE}, so their settings are unknown; use another --out, "
                "or --overwrite to discard them"
            )
        atomic_write_text(path, json.dumps({"identity": ident, "about": about}, indent=2))


@contextmanager
def writing(cases_path: Path, shard: str) -> Iterator[None]:
    """Hold the lock of one shard's cases file while this process writes it; refuse if another holds it."""
    with ExitStack() as stack:
        try:
            stack.enter_context(locked(cases_path, timeout=0))
        except Timeout:
            raise RunLockedError(
                f"another clmedit process is already running shard {shard} into {cases_path.parent} "
                f"(it holds {cases_path.name}.lock); wait for it to finish, or run another --shard"
            ) from None
        yield
