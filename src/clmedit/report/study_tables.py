"""The study's other tables, as Markdown and LaTeX: III (dataset lengths), V (CSNE -> CNLE drop), VI (the
GRACE family), the cost table (Fig. 3/4 in numbers), and the published reference rows.

Input: summaries (`summary.json` dicts) and the study's dataset statistics; pure formatting, no torch.
A `Table` is a title, a header and rows of cells; `markdown()` and `latex()` render any of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clmedit.report import escape
from clmedit.report.tables import GROUPS, METRICS, _order, _tex, editor_label, metric

GRACE_FAMILY = ("grace", "agrace", "agrace-no-cl", "agrace-last")
LENGTH_ROWS = (
    ("input", "Input"),
    ("target", "Target"),
    ("rephrase", "Generalization input"),
    ("neighbour", "Specificity input"),
    ("neighbour_answer", "Specificity target"),
)
PUBLISHED = Path(__file__).with_name("published.json")


@dataclass
class Table:
    title: str
    head: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    classes: list[str] = field(default_factory=list)  # per row: "ours" or "published" (the HTML page)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _task_of(summary: dict[str, Any]) -> str:
    tasks = summary.get("tasks") if isinstance(summary.get("tasks"), list) else []
    return "+".join(str(t).lower() for t in tasks) or "?"


def table3(datasets: dict[str, dict[str, Any]]) -> Table:
    """Table III: mean (median) token length per field and task; `datasets[task]` holds `lengths`, `cases`."""
    tasks = sorted(datasets)
    t = Table(
        "Table III: dataset statistics (mean / median length in tokens)", ["Field", *map(str.upper, tasks)]
    )
    t.rows.append(["Cases", *(str(datasets[k].get("cases", "-")) for k in tasks)])
    for key, label in LENGTH_ROWS:
        cells = []
        for task in tasks:
            row = (datasets[task].get("lengths") or {}).get(key)
            cells.append(f"{row['mean']:.2f} / {row['median']:.1f}" if row and row.get("n") else "-")
        t.rows.append([label, *cells])
    counters = sorted({str(d.get("token_counter")) for d in datasets.values() if d.get("token_counter")})
    t.note = "Tokens: " + ", ".join(counters) if counters else ""
    t.classes = ["ours"] * len(t.rows)
    return t


def metric_table(
    title: str, summaries: list[dict[str, Any]], editors: tuple[str, ...] | None = None
) -> Table:
    """Table IV/VI layout: one row per run (editor, task), Eff./Gen./Spec. EM, BLEU, RL and fluency."""
    head = ["Task", "Editor"] + [f"{s} {m}" for _, s in GROUPS for _, m in METRICS] + ["Fluency"]
    t = Table(title, head)
    rows = [s for s in summaries if editors is None or str(s.get("editor")) in editors]
    rows.sort(
        key=lambda s: (
            _task_of(s),
            bool(s.get("published")),
            str(s.get("model")),
            _order(str(s.get("editor"))),
        )
    )
    for s in rows:
        cells = [metric(s, g, n) for g, _ in GROUPS for n, _ in METRICS] + [metric(s, "fluency")]
        label = editor_label(s)
        if s.get("published"):
            label += f" [published, {s.get('model')}]"
        elif (s.get("counts") or {}).get("failed"):
            label += f" ({s['counts']['failed']} failed)"
        t.rows.append([_task_of(s).upper(), label, *(_fmt(v) for v in cells)])
        t.classes.append("published" if s.get("published") else "ours")
    return t


def table4(summaries: list[dict[str, Any]], published: list[dict[str, Any]] | None = None) -> Table:
    t = metric_table("Table IV: every editor on both tasks (x100)", summaries + (published or []))
    t.note = _published_note(published)
    return t


def table6(summaries: list[dict[str, Any]], published: list[dict[str, Any]] | None = None) -> Table:
    t = metric_table(
        "Table VI: A-GRACE, GRACE and the ablations (x100)", summaries + (published or []), GRACE_FAMILY
    )
    t.note = _published_note(published)
    return t


def table5(summaries: list[dict[str, Any]]) -> Table:
    """Table V: effectiveness on CSNE and on CNLE and the drop CSNE - CNLE, per editor and metric."""
    head = ["Editor"] + [f"{task} {m}" for task in ("CSNE", "CNLE", "Drop") for _, m in METRICS]
    t = Table("Table V: drop of effectiveness from CSNE to CNLE (x100)", head)
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for s in summaries:
        if not s.get("published"):
            by.setdefault(str(s.get("editor")), {})[_task_of(s)] = s
    for editor in sorted(by, key=_order):
        csne, cnle = by[editor].get("csne"), by[editor].get("cnle")
        a = [metric(csne, "effectiveness", m) if csne else None for m, _ in METRICS]
        b = [metric(cnle, "effectiveness", m) if cnle else None for m, _ in METRICS]
        drop = [x - y if x is not None and y is not None else None for x, y in zip(a, b)]
        t.rows.append([editor_label((csne or cnle) or {}), *(_fmt(v) for v in a + b + drop)])
        t.classes.append("ours")
    return t


def cost_table(summaries: list[dict[str, Any]]) -> Table:
    """Mean seconds, mean own peak and mean resident peak (MiB) of one edit, per editor and task."""
    t = Table(
        "Cost of one edit (mean over cases)",
        ["Task", "Editor", "Seconds", "Own peak (MiB)", "Resident peak (MiB)"],
    )
    for s in sorted(summaries, key=lambda s: (_task_of(s), _order(str(s.get("editor"))))):
        c = s.get("cost") or {}
        mib = [c.get(k) / 2**20 if isinstance(c.get(k), (int, float)) else None
               for k in ("mean_peak_bytes", "mean_resident_peak_bytes")]  # fmt: skip
        t.rows.append(
            [_task_of(s).upper(), editor_label(s), _fmt(c.get("mean_seconds")), *(_fmt(v, 1) for v in mib)]
        )
        t.classes.append("ours")
    t.note = "Own peak: memory above what the process held before the edit (the study's measure); resident: the total."
    return t


def published_rows(
    model_task_editors: set[tuple[str, str]] | None = None, path: Path = PUBLISHED
) -> list[dict[str, Any]]:
    """The study's own numbers for its three models as summary-like rows marked `published`.

    Rows whose numbers are not filled in (null in published.json) are left out.
    """
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    rows = []
    for r in data.get("rows") or []:
        if not isinstance(r, dict) or not isinstance(r.get("metrics"), dict):
            continue
        if model_task_editors is not None and (r.get("task"), r.get("editor")) not in model_task_editors:
            continue
        rows.append({"editor": r.get("editor"), "model": r.get("model"), "tasks": [r.get("task")],
                     "metrics": r["metrics"], "published": True})  # fmt: skip
    return rows


def _published_note(published: list[dict[str, Any]] | None) -> str:
    if published:
        return "Rows marked [published, MODEL] are the study's figures for other models (arXiv 2411.06638)."
    return ("The study's published figures (arXiv 2411.06638) are not filled in: add them to "
            "clmedit/report/published.json to show them as reference rows.")  # fmt: skip


def markdown(t: Table) -> str:
    out = [
        f"### {escape.markdown(t.title)}",
        "",
        "| " + " | ".join(map(escape.markdown, t.head)) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(t.head) - 1)) + "|",
    ]
    out += ["| " + " | ".join(map(escape.markdown, r)) + " |" for r in t.rows]
    if t.note:
        out += ["", escape.markdown(t.note)]
    return "\n".join(out)


def latex(t: Table) -> str:
    out = [r"\begin{table}[t]\centering", rf"\caption{{{_tex(t.title)}}}", r"\begin{tabular}{l" + "r" * (len(t.head) - 1) + "}",
           r"\toprule", " & ".join(_tex(h) for h in t.head) + r" \\", r"\midrule"]  # fmt: skip
    out += [" & ".join(_tex(c) for c in r) + r" \\" for r in t.rows]
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out)
