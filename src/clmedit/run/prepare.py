"""What a run needs before its first edit: the case file, and the unedited model's neighbour answers.

The answers (greedy 16-token outputs of the unedited model, the specificity references) are
computed once per model and dataset, before any edit, and cached in a sidecar JSON beside the data
(`<data>.answers.<model>.json`, neighbour prompt -> answer), so every editor's run reuses them.
Runs of several editors on one dataset often start together: the write merges into what is on
disk at that moment, under a lock file, so no run's answers overwrite another's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clmedit.data.schema import EditCase, atomic_write_text
from clmedit.errors import InputError

log = logging.getLogger(__name__)


def resolve_data(spec: str, seed: int = 0) -> Path:
    """A case file path, building the default dataset for 'default:<task>' on first use."""
    if spec.startswith("default:"):
        from clmedit.data.build import default_dataset

        task = spec.split(":", 1)[1]
        if task not in ("cnle", "csne"):
            raise InputError(f"unknown default dataset {spec!r}; use default:cnle or default:csne")
        return Path(default_dataset(task, seed=seed))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist (or use default:cnle / default:csne)")
    return path


def _answers_sidecar(data: Path, model_name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("_") or "model"
    return data.with_name(f"{data.name}.answers.{slug}.json")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path`.lock (other clmedit processes wait)."""
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_base_answers(model, tok, cases: list[EditCase], data: Path, model_name: str) -> int:
    """Fill each neighbour's unedited answer for this model, reusing and extending a sidecar cache.

    The cache maps neighbour prompt -> greedy 16-token output; it must be filled before any edit.
    Returns how many cases needed new answers.
    """
    from clmedit.eval.protocol import fill_base_answers

    sidecar = _answers_sidecar(data, model_name)
    cached: dict[str, str] = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    for case in cases:
        for n in case.neighbours:
            if model_name not in n.answers and n.prompt in cached:
                n.answers[model_name] = cached[n.prompt]
    filled = fill_base_answers(model, tok, cases, model_name=model_name)
    if filled:
        new = {n.prompt: n.answers[model_name] for c in cases for n in c.neighbours}
        try:
            with _locked(sidecar):  # merge with answers another run wrote meanwhile
                latest = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
                atomic_write_text(sidecar, json.dumps({**latest, **new}, ensure_ascii=False))
        except OSError as err:  # a read-only dataset folder: answers are just recomputed next time
            log.warning("could not cache base answers at %s: %s", sidecar, err)
    return filled
