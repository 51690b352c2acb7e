"""The edit case: one editing instance M = (X, Y, C, U), and its JSONL storage.

Every other room speaks this type. A case carries everything the protocol needs:
the formatted edit prompt X, the target Y, a formatted rephrase X' (generalization)
and five neighbours U (specificity), each with the unedited model's own output per
model name (computed once per model and cached here).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clmedit.files import atomic_write_text

Task = Literal["cnle", "csne"]

PROMPT_TEMPLATES: dict[str, str] = {
    "cnle": "Intent: {text}\nCode:",
    "csne": "Code: {text}\nDescription:",
}


def format_prompt(task: Task, text: str) -> str:
    """The study's prompt for a raw input: NL intent (cnle) or code (csne)."""
    if task not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[task].format(text=text)


class Neighbour(BaseModel):
    """A non-target input near the edit prompt; editing must leave its output alone."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="formatted with the task template")
    answers: dict[str, str] = Field(
        default_factory=dict,
        description="model name -> the unedited model's greedy 16-token output (the specificity reference)",
    )


class EditCase(BaseModel):
    """One editing instance. `prompt`, `rephrase` and neighbour prompts are already formatted."""

    model_config = ConfigDict(extra="forbid")

    case_id: str
    task: Task
    prompt: str = Field(description="X: the edit input, formatted")
    target: str = Field(description="Y: the desired output")
    rephrase: str = Field(description="X': same meaning, other words or identifiers, formatted")
    neighbours: list[Neighbour] = Field(description="U: the nearest non-target inputs (5 in CLMEEval)")
    meta: dict[str, Any] = Field(
        default_factory=dict,
        description="provenance: raw input/output, source, rephrase kind, judge level, ...",
    )

    def has_answers(self, model_name: str) -> bool:
        return all(model_name in n.answers for n in self.neighbours)


class CaseFileError(ValueError):
    """A case file that cannot be read at all (missing, not JSONL, no valid case)."""


def iter_jsonl(path: str | Path, skipped: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a (optionally gzipped) JSONL file.

    Malformed lines are skipped and counted in `skipped` by reason, never raised.
    """
    import gzip

    path = Path(path)
    if not path.is_file():
        raise CaseFileError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    skipped = skipped if skipped is not None else Counter()
    with opener(path, "rb") as fh:
        for raw in fh:
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                skipped["non-utf8 line"] += 1
                continue
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped["malformed json line"] += 1
                continue
            if not isinstance(obj, dict):
                skipped["json line is not an object"] += 1
                continue
            yield obj


def read_cases(path: str | Path, skipped: Counter | None = None) -> list[EditCase]:
    """Read our JSONL case file. Invalid records are skipped and counted; an empty result is an error."""
    skipped = skipped if skipped is not None else Counter()
    cases = []
    for obj in iter_jsonl(path, skipped):
        try:
            cases.append(EditCase.model_validate(obj))
        except ValidationError as err:
            field = ".".join(str(p) for p in err.errors()[0]["loc"]) or "record"
            skipped[f"invalid case ({field})"] += 1
    if not cases:
        detail = f" (skipped: {dict(skipped)})" if skipped else ""
        raise CaseFileError(f"{path}: no valid edit case found{detail}")
    return cases


def write_cases(path: str | Path, cases: Iterable[EditCase]) -> Path:
    """Write cases as JSONL atomically: a crash never leaves a half-written file."""
    lines = (c.model_dump_json() + "\n" for c in cases)
    return atomic_write_text(path, "".join(lines))
