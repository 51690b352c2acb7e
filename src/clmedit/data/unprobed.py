"""Inputs of a source that no case is scored on: the build's *unprobed* inputs.

A build draws each case's neighbours from a pool of non-targeted inputs and keeps only the k nearest,
so most of the pool (and every targeted input that did not become a case) is never a prompt, a
rephrase or a neighbour of any case. They are written beside the cases, formatted as prompts, in
`<name>.unprobed.jsonl` (one `{"prompt": ...}` per line). A trainable editor may learn from them what
the inputs around an edit look like (SCOPE: more known keys, more negatives) without ever seeing a
probe; the runner still removes any line that is a probe of the fold it fits for (`unprobed_prompts`),
since the file is a user's input and may hold anything.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from clmedit.data.schema import EditCase, iter_jsonl, probe_texts
from clmedit.files import atomic_write_text

log = logging.getLogger(__name__)


def unprobed_path(cases_path: str | Path) -> Path:
    """`data/x.jsonl` -> `data/x.unprobed.jsonl` (also for `x.jsonl.gz`)."""
    path = Path(cases_path)
    return path.with_name(path.name.removesuffix(".gz").removesuffix(".jsonl") + ".unprobed.jsonl")


def unprobed_prompts(candidates: Iterable[str], cases: Iterable[EditCase]) -> list[str]:
    """The distinct `candidates` (formatted prompts, in order) that are no probe of any of `cases`."""
    probes = probe_texts(cases)
    return list(dict.fromkeys(t for t in candidates if t not in probes))


def write_unprobed(cases_path: str | Path, prompts: Iterable[str]) -> Path:
    """Write the unprobed prompts beside the case file `cases_path` (atomically)."""
    lines = (json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts)
    return atomic_write_text(unprobed_path(cases_path), "".join(lines))


def read_unprobed(cases_path: str | Path) -> list[str]:
    """The unprobed prompts beside `cases_path`; [] when the data has none (a file built elsewhere).

    A line that is not `{"prompt": <non-empty text>}` is skipped with a warning, never trusted.
    """
    path = unprobed_path(cases_path)
    if not path.is_file():
        return []
    skipped: Counter = Counter()
    prompts = []
    for obj in iter_jsonl(path, skipped):
        text = obj.get("prompt")
        if isinstance(text, str) and text.strip():
            prompts.append(text)
        else:
            skipped["no prompt text"] += 1
    if skipped:
        log.warning("%s: skipped %d line(s): %s", path, sum(skipped.values()), dict(skipped))
    return list(dict.fromkeys(prompts))
