"""Fixes as a user writes them: JSON lines of full edit cases, or {prompt|intent|code, target}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clmedit.data.schema import EditCase, SkippedLines, format_prompt, iter_jsonl
from clmedit.errors import InputError, describe_validation


def read_fixes(path: str | Path, task: str = "cnle", first: int = 0) -> list[EditCase]:
    """Fixes from JSONL: full EditCase lines, or {prompt|intent|code, target} lines.

    `intent` is formatted as a CNLE prompt, `code` as a CSNE prompt, `prompt` with `task`'s
    template unless it is already formatted. A fix without an id is `fix-{first + i}` (`first`:
    how many fixes a fix file being extended already holds).
    """
    fixes = []
    skipped = SkippedLines()
    for i, obj in enumerate(iter_jsonl(path, skipped)):
        try:
            fixes.append(parse_fix(obj, first + i, task))
        except ValidationError as err:
            raise InputError(
                f"{path}: fix {i + 1} is not a valid edit case ({describe_validation(err)})"
            ) from None
        except InputError as err:
            raise InputError(f"{path}: fix {i + 1} {err}") from None
    if skipped:
        where = ", ".join(f"line {n}: {r}" for n, r in skipped.lines[:5])
        raise InputError(f"{path}: {sum(skipped.values())} line(s) are not JSON objects ({where}); fix them")
    if not fixes:
        raise InputError(f"{path}: no fixes found")
    return fixes


def parse_fix(obj: dict[str, Any], i: int = 0, task: str = "cnle") -> EditCase:
    """One fix (the `i`-th; `fix-{i}` is its id unless it has one) from a JSON object of `read_fixes`'s
    forms; ValidationError or InputError when it is none of them."""
    if "neighbours" in obj and "case_id" in obj:
        return EditCase.model_validate(obj)
    key = next((k for k in ("intent", "code", "prompt") if k in obj), None)
    if key is None:
        raise InputError("needs one of 'prompt', 'intent' or 'code', and a 'target'")
    text, target = obj[key], obj.get("target")
    for name, value in ((key, text), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"needs a non-empty string {name!r}, got {value!r}")
    t = {"intent": "cnle", "code": "csne"}.get(key, task)
    prompt = as_prompt(text, task) if key == "prompt" else format_prompt(t, text)  # type: ignore[arg-type]
    return EditCase(case_id=str(obj.get("id", f"fix-{i}")), task=t, prompt=prompt, target=target,
                    rephrase=prompt, neighbours=[])  # fmt: skip


def as_prompt(text: str, task: str = "cnle") -> str:
    """`text` formatted with the task template unless it already is (ends with 'Code:'/'Description:')."""
    if text.rstrip().endswith(("Code:", "Description:")):
        return text
    return format_prompt(task, text)  # type: ignore[arg-type]
