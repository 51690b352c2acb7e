"""The edit case: one editing instance M = (X, Y, C, U), and its JSONL storage.

Every other room speaks this type. A case carries everything the protocol needs:
the formatted edit prompt X, the target Y, a formatted rephrase X' (generalization)
and five neighbours U (specificity), each with the unedited model's own output per
model name (computed once per model and cached here).

An edit itself sees only an `EditRequest` (case id, task, X, Y): `Editor.apply` hands editors
requests, never the rephrase and neighbours a case is scored on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clmedit.errors import InputError
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


def prompt_input(task: Task, prompt: str) -> str | None:
    """The raw input inside a formatted prompt (the inverse of `format_prompt`), None if not one."""
    head, _, tail = PROMPT_TEMPLATES[task].partition("{text}")
    if len(prompt) < len(head) + len(tail) or not prompt.startswith(head) or not prompt.endswith(tail):
        return None
    return prompt[len(head) : len(prompt) - len(tail)]


def _require_text(v: str) -> str:
    if not v.strip():  # an empty text has no tokens: nothing to edit, score or generate from
        raise ValueError("must not be empty or only whitespace")
    return v


class Neighbour(BaseModel):
    """A non-target input near the edit prompt; editing must leave its output alone."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="formatted with the task template")
    answers: dict[str, str] = Field(
        default_factory=dict,
        description="model name -> the unedited model's greedy 16-token output (the specificity reference)",
    )

    _not_blank = field_validator("prompt")(_require_text)


class EditRequest(BaseModel):
    """What an edit receives: the fix (X, Y) with its id and task, and nothing it is scored on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    case_id: str
    task: Task
    prompt: str = Field(description="X: the edit input, formatted")
    target: str = Field(description="Y: the desired output")

    _not_blank = field_validator("prompt", "target")(_require_text)


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

    _not_blank = field_validator("prompt", "target")(_require_text)

    def request(self) -> EditRequest:
        """The edit request of this case: its id, task, prompt and target, nothing else."""
        return EditRequest(case_id=self.case_id, task=self.task, prompt=self.prompt, target=self.target)

    def has_answers(self, model_name: str) -> bool:
        return all(model_name in n.answers for n in self.neighbours)


def probe_texts(cases: Iterable[EditCase]) -> set[str]:
    """Every input the protocol scores `cases` on: their prompts, rephrases and neighbour prompts."""
    return {t for c in cases for t in (c.prompt, c.rephrase, *(n.prompt for n in c.neighbours))}


def as_request(item: EditCase | EditRequest) -> EditRequest:
    """The request an editor may see for `item` (a case is stripped of its rephrase and neighbours)."""
    if isinstance(item, EditRequest):
        return item
    if isinstance(item, EditCase):
        return item.request()
    raise TypeError(f"an edit takes EditCase or EditRequest items, not {type(item).__name__}")


class CaseFileError(InputError):
    """A case file that cannot be read at all (missing, not JSONL, truncated, no valid case)."""


class SkippedLines(Counter):
    """Reason -> count of skipped lines, plus (line number, reason) of the first `MAX_LINES` of them."""

    MAX_LINES = 1000

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[tuple[int, str]] = []

    def add(self, line: int, reason: str, detail: str = "") -> None:
        self[reason] += 1
        if len(self.lines) < self.MAX_LINES:
            self.lines.append((line, f"{reason}: {detail}" if detail else reason))


def _skip(skipped: Counter, line: int, reason: str, detail: str = "") -> None:
    if isinstance(skipped, SkippedLines):
        skipped.add(line, reason, detail)
    else:
        skipped[reason] += 1


def _numbered_jsonl(path: Path, skipped: Counter) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each JSON-object line; other non-blank lines go to `skipped`."""
    import gzip
    import zlib

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:  # utf-8-sig: a byte-order mark (Windows editors) must not hide the first line
                    line = raw.decode("utf-8-sig").strip()
                except UnicodeDecodeError as err:
                    _skip(skipped, number, "non-utf8 line", str(err))
                    continue
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    _skip(skipped, number, "malformed json line", str(err))
                    continue
                if not isinstance(obj, dict):
                    _skip(skipped, number, "json line is not an object", type(obj).__name__)
                    continue
                yield number, obj
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CaseFileError(
            f"{path}: truncated or corrupt gzip file ({err}); download or build it again"
        ) from None
    except IsADirectoryError:
        raise CaseFileError(f"{path} is a folder, not a JSONL file") from None


def iter_jsonl(path: str | Path, skipped: Counter | None = None) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a (optionally gzipped) JSONL file.

    Malformed lines are skipped and counted in `skipped` by reason (with line numbers when it is
    a `SkippedLines`), never raised; a truncated gzip file is a `CaseFileError`.
    """
    path = Path(path)
    if not path.exists():
        raise CaseFileError(f"{path}: no such file")
    for _, obj in _numbered_jsonl(path, skipped if skipped is not None else Counter()):
        yield obj


def read_cases(path: str | Path, skipped: Counter | None = None) -> list[EditCase]:
    """Read our JSONL case file. Invalid records are skipped and counted; an empty result is an error.

    Pass a `SkippedLines` to learn which lines were skipped and why (the runner reports them).
    """
    path = Path(path)
    if not path.exists():
        raise CaseFileError(f"{path}: no such file")
    skipped = skipped if skipped is not None else Counter()
    cases = []
    for number, obj in _numbered_jsonl(path, skipped):
        try:
            cases.append(EditCase.model_validate(obj))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "record"
            _skip(skipped, number, f"invalid case ({field})", first["msg"])
    if not cases:
        detail = f" (skipped: {dict(skipped)})" if skipped else ""
        raise CaseFileError(f"{path}: no valid edit case found{detail}")
    return cases


def write_cases(path: str | Path, cases: Iterable[EditCase]) -> Path:
    """Write cases as JSONL atomically: a crash never leaves a half-written file."""
    lines = (c.model_dump_json() + "\n" for c in cases)
    return atomic_write_text(path, "".join(lines))
