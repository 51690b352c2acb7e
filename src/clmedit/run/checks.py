"""Checks a run makes before it spends time: the output folder, the device, and each case's length.

The first two run before the model loads, so a typo costs a second, not a model load and a case.
A case whose prompt (with its target, or with the tokens the protocol generates) does not fit the
model's context window cannot be edited or scored meaningfully; it becomes a per-case error.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase, SkippedLines
from clmedit.errors import InputError

log = logging.getLogger(__name__)


def check_out_dir(out: str | Path) -> Path:
    """Create the run folder if needed and make sure files can be written in it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder; give a folder for the run's results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(
            f"cannot write the run folder --out {out} ({err.strerror or err}); choose a writable folder"
        ) from None
    return out


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have (before any model is loaded)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(
            f"--device {device!r} is not a torch device; use cpu, cuda, cuda:1, mps ..."
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA device(s) (0..{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available on this machine; use --device cpu")


def context_window(model) -> int | None:
    """The model's maximum sequence length, when its config states one."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def case_problem(case: EditCase, tok, window: int | None, fluency: bool) -> str | None:
    """Why `case` cannot be run on a model with this context window, or None when it can.

    Counted as the protocol uses them: prompt and rephrase with the target's tokens (editing and
    effectiveness/generalization), neighbours with the 16 specificity tokens, and with fluency the
    64 sampled tokens after prompt and rephrase.
    """
    from clmedit.eval.protocol import FLUENCY_TOKENS, NEIGHBOUR_TOKENS
    from clmedit.models.text import prompt_ids, target_ids

    for name in ("prompt", "target"):
        if not getattr(case, name).strip():
            return f"case {case.case_id!r}: the {name} is empty"
    if window is None:
        return None
    n_target = len(target_ids(tok, case.prompt, case.target))
    gen = max(n_target, FLUENCY_TOKENS if fluency else 0)
    needs = [
        ("prompt", len(prompt_ids(tok, case.prompt)) + gen),
        ("rephrase", len(prompt_ids(tok, case.rephrase)) + gen),
    ]
    needs += [
        (f"neighbour {i}", len(prompt_ids(tok, n.prompt)) + NEIGHBOUR_TOKENS)
        for i, n in enumerate(case.neighbours)
    ]
    for what, length in needs:
        if length > window:
            return (
                f"case {case.case_id!r}: the {what} needs {length} tokens with the generated ones, more than "
                f"the model's context window of {window}; shorten it or drop the case"
            )
    return None


def skipped_summary(data: Path, skipped: SkippedLines, show: int = 20) -> dict[str, Any]:
    """Log the case file's skipped lines (the first `show`, then a count); their record for summary.json."""
    for number, reason in skipped.lines[:show]:
        log.warning("%s line %d skipped: %s", data, number, reason)
    total = sum(skipped.values())
    if total > show:
        log.warning("%s: %d lines skipped in all (%s)", data, total, dict(skipped))
    lines = [{"line": n, "reason": r} for n, r in skipped.lines[:100]]
    return {"file": str(data), "count": total, "by_reason": dict(skipped), "lines": lines}
