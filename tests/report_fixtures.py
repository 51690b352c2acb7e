"""A small synthetic study folder (no model): hand-made records for a few editors on both tasks."""

from __future__ import annotations

import json
from pathlib import Path

from clmedit.run.summary import row_facts, write_summary

# (task, editor) -> per-case (effectiveness EM, generalization EM, specificity EM); every case's BLEU and
# ROUGE-L equal its EM, fluency 2.0 bits; seconds 1.0 * (case index + 1), own peak 2 MiB, resident 10 MiB.
GRID = {
    ("cnle", "none"): [(0, 0, 1), (0, 0, 1)],
    ("cnle", "grace"): [(1, 0, 1), (0, 0, 0)],
    ("cnle", "agrace"): [(1, 1, 0), (1, 0, 1)],
    ("csne", "none"): [(0, 0, 1), (0, 0, 1)],
    ("csne", "grace"): [(1, 1, 1), (1, 0, 1)],
    ("csne", "agrace"): [(1, 1, 1), (1, 1, 0)],
}
# a trained row's fitting seconds per fold as summary.json records them: CNLE A-GRACE 1 and 3 min (mean
# 2.0); CSNE's figures are broken (a string, NaN, a negative, a bool), so none of them may be shown
FITS = {("cnle", "agrace"): {"fit_seconds": {"0": 60.0, "1": 180.0}},
        ("csne", "agrace"): {"fit_seconds": {"0": "120", "1": float("nan"), "2": -5.0, "3": True}}}  # fmt: skip
CASES = {
    task: [
        {"case_id": f"{task}-{i}", "prompt": f"Intent: task {i}\nCode:", "target": f"f({i})",
         "rephrase": f"Intent: job {i}\nCode:",
         "neighbours": [{"prompt": f"Intent: other {i}.{k}\nCode:", "expected": f"g({k})"} for k in range(5)]}
        for i in range(2)
    ]
    for task in ("cnle", "csne")
}  # fmt: skip


def _record(task: str, editor: str, i: int, ems: tuple[int, int, int]) -> dict:
    triple = [{"em": float(v), "bleu": float(v), "rouge_l": float(v)} for v in ems]
    out = f"f({i})" if ems[0] else "unedited words here"
    return {
        "case_id": f"{task}-{i}", "task": task, "editor": editor, "model": "synthetic",
        "scores": {"case_id": f"{task}-{i}", "effectiveness": triple[0], "generalization": triple[1],
                   "specificity": triple[2], "fluency": 2.0},
        "outputs": {"prompt": out, "rephrase": out, "neighbours": [f"g({k})" for k in range(5)], "fluency": []},
        "seconds": 1.0 * (i + 1), "peak_bytes": 2 * 2**20, "resident_peak_bytes": 10 * 2**20, "error": None,
        "info": {"distances": {"rephrase": 1.0 + i, "neighbours": [2.0, 3.0, 4.0, 5.0, 6.0]},
                 "keys": {"prompt": [i, 0.0, 1.0], "rephrase": [i, 1.0, 0.0], "neighbours": [[0.0, i, 2.0]] * 5}},
    }  # fmt: skip


def make_study(root: Path) -> Path:
    """Write the synthetic study into `root` (study.json, runs with cases.jsonl + summary.json, case files)."""
    runs = []
    for (task, editor), rows in GRID.items():
        d = root / task / editor
        d.mkdir(parents=True)
        recs = [_record(task, editor, i, ems) for i, ems in enumerate(rows)]
        (d / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))  # the old form: outputs beside scores
        write_summary(d, **row_facts(editor), **FITS.get((task, editor), {}))
        runs.append({"task": task, "editor": editor, "dir": f"{task}/{editor}"})
    lengths = {"input": {"mean": 3.0, "median": 3.0, "n": 2}, "target": {"mean": 4.0, "median": 4.0, "n": 2},
               "rephrase": {"mean": 3.5, "median": 3.5, "n": 2}, "neighbour": {"mean": 3.0, "median": 3.0, "n": 10},
               "neighbour_answer": {"mean": 4.0, "median": 4.0, "n": 10}}  # fmt: skip
    datasets = {}
    for task, cases in CASES.items():
        (root / task / "study_cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
        datasets[task] = {"cases": 2, "lengths": lengths, "token_counter": "regex proxy",
                          "cases_file": f"{task}/study_cases.jsonl"}  # fmt: skip
    manifest = {"model": "synthetic", "size": "quick", "size_note": "QUICK: synthetic", "tasks": ["cnle", "csne"],
                "runs": runs, "datasets": datasets}  # fmt: skip
    (root / "study.json").write_text(json.dumps(manifest))
    return root
