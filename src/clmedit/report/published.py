"""The study's published figures (arXiv 2411.06638, Tables III-VI) as the report shows them.

`published.json` beside this module is the transcription of the paper's tables, with its `source`
line (the same file as `../shared/published/clmeeval-published.json`); this module only reads it.
Metric rows come back as summary-like dicts marked `published: True`, so the tables format them like
ours and label them "published, <model>"; nothing here is ever averaged with our own numbers.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).with_name("published.json")
# The paper's model names as the report's labels ("published, CodeLlama-7B").
SHORT = {
    "CodeLlama-7b-hf": "CodeLlama-7B",
    "CodeQwen1.5-7B": "CodeQwen1.5-7B",
    "stable-code-3b": "StableCode-3B",
}
# The paper's editor names -> ours (the report reads results files only, never the editor registry).
EDITORS = {"unedited": "none", "FT-L": "ft", "ROME": "rome", "MEMIT": "memit", "PMET": "pmet", "MALMEN": "malmen",
           "GRACE": "grace", "A-GRACE": "agrace", "w/o CL": "agrace-no-cl", "w/o mean": "agrace-last"}  # fmt: skip
# Table III's fields in the paper -> the keys of our `lengths` (data.stats.length_table + neighbour_answer).
TABLE3_FIELDS = {
    "input": "effectiveness_input",
    "target": "target",
    "rephrase": "generalization_input",
    "neighbour": "specificity_input",
    "neighbour_answer": "specificity_target",
}
TASKS = ("cnle", "csne")


@lru_cache(maxsize=4)
def load(path: Path = PUBLISHED) -> dict[str, Any]:
    """The shipped transcription (an empty dict when the file is missing)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def source(data: dict[str, Any] | None = None) -> str:
    return str((data if data is not None else load()).get("source", ""))


def model_label(model: str) -> str:
    """'published, CodeLlama-7B': how every published row is marked."""
    return f"published, {SHORT.get(model, model)}"


def editor_name(printed: str) -> str:
    """Our name of an editor as the paper prints it ('FT-L' -> 'ft', 'w/o CL' -> 'agrace-no-cl')."""
    return EDITORS.get(printed, printed.lower())


def metric_rows(
    table: str = "table4_editors",
    pairs: set[tuple[str, str]] | None = None,
    data: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows of Table IV ('table4_editors') or VI ('table6_agrace'), one per (model, editor, task).

    `pairs` keeps only the (task, editor) cells our run has, so no table shows a paper-only row.
    """
    data = data if data is not None else load()
    rows = []
    for r in data.get(table) or []:
        editor = editor_name(str(r["editor"]))
        for task in TASKS:
            if isinstance(r.get(task), dict) and (pairs is None or (task, editor) in pairs):
                rows.append({"editor": editor, "model": r["model"], "tasks": [task], "metrics": r[task],
                             "published": True, "source": source(data)})  # fmt: skip
    return rows


def grids(data: dict[str, Any] | None = None) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Per published model: (task, editor) -> {'metrics': ...}, from Tables IV and VI together."""
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for table in ("table4_editors", "table6_agrace"):
        for row in metric_rows(table, data=data):
            out.setdefault(row["model"], {})[(row["tasks"][0], row["editor"])] = {"metrics": row["metrics"]}
    return out


def table3_stats(task: str, data: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Table III of the paper for `task`, keyed like our lengths: {'input': {'mean', 'median', 'count'}, ...}."""
    stats = ((data if data is not None else load()).get("table3_dataset_statistics") or {}).get(task) or {}
    return {
        ours: stats[theirs] for ours, theirs in TABLE3_FIELDS.items() if isinstance(stats.get(theirs), dict)
    }


def table5_decrease(data: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Table V of the paper: {model or 'average': {editor name: % decrease of effectiveness EM}}."""
    table = (data if data is not None else load()).get("table5_effectiveness_drop_csne_to_cnle_percent") or {}
    return {model: {editor_name(e): float(v) for e, v in row.items()} for model, row in table.items()}


def efficiency_text(data: dict[str, Any] | None = None) -> list[str]:
    """What the paper says of Fig. 3 (seconds per edit) and Fig. 4 (memory per edit): it prints no numbers."""
    return [str(line) for line in (data if data is not None else load()).get("efficiency_text") or []]
