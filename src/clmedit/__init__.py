"""clmedit: edit the knowledge of code LLMs and measure how well that works.

    from clmedit import load_model, get_editor, evaluate_case, read_cases, load_edited
    model, tok = load_model("smollm2-135m")
    cases = read_cases("cnle.jsonl")
    result = get_editor("grace", preset="smollm2-135m").apply(model, tok, cases[:1])
    scores = evaluate_case(model, tok, cases[0])
    result.restore()

    result = load_edited(model, "my-fix")   # a saved fix file or exported adapter, on any loaded base model

Names are imported lazily so that `import clmedit` (and the CLI's help) stays fast.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# MKL's fast memory manager keeps each GEMM's work buffers, sized to the largest product seen so far,
# for the life of the process: about 5 MB per new sequence length on smollm2-135m, up to ~15 MB. In a
# 1,000-edit lifelong run that reads as resident growth that no edit holds. Off, forwards measured no
# slower. MKL reads the setting once, when torch loads it: it applies when clmedit is imported before
# torch (the CLI always is), and a value the user set is kept.
os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")

__version__ = "0.1.0"

_API: dict[str, str] = {
    "load_model": "clmedit.models.load",
    "tiny_model": "clmedit.models.tiny",
    "arch_of": "clmedit.models.arch",
    "EditCase": "clmedit.data.schema",
    "Neighbour": "clmedit.data.schema",
    "read_cases": "clmedit.data.schema",
    "write_cases": "clmedit.data.schema",
    "get_editor": "clmedit.editors.base",
    "editor_names": "clmedit.editors.base",
    "register_editor": "clmedit.editors.base",
    "Editor": "clmedit.editors.base",
    "EditResult": "clmedit.editors.base",
    "EditSession": "clmedit.editors.session",
    "evaluate_case": "clmedit.eval.protocol",
    "CaseScores": "clmedit.eval.scores",
    "load_edited": "clmedit.fixes.artifact",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'clmedit' has no attribute {name!r}")
