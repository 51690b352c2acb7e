"""The study's other tables, as Markdown and LaTeX: III (dataset lengths), V (CSNE -> CNLE decrease), VI
(the GRACE family, SCOPE beside it), the cost table (Fig. 3/4 in numbers).

Input: summaries (`summary.json` dicts), the study's dataset statistics and the paper's published
figures (`report.published`), shown beside ours as rows or columns marked "published", never averaged
with ours. Pure formatting, no torch. A `Table` is a title, a header and rows of cells; `markdown()`
and `latex()` render any of them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from clmedit.files import finite_number
from clmedit.report import escape
from clmedit.report import published as pub
from clmedit.report.findings import decrease, grid_of
from clmedit.report.tables import (
    GROUPS,
    METRICS,
    _order,
    _tex,
    budget_note,
    dressed,
    editor_label,
    metric,
    roster,
)

GRACE_FAMILY = ("grace", "agrace", "agrace-no-cl", "agrace-last", "scope")
LENGTH_ROWS = (
    ("input", "Input"),
    ("target", "Target"),
    ("rephrase", "Generalization input"),
    ("neighbour", "Specificity input"),
    ("neighbour_answer", "Specificity target"),
)


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


def _length(row: dict[str, Any] | None) -> str:
    return f"{row['mean']:.2f} / {row['median']:.1f}" if row and (row.get("n") or row.get("count")) else "-"


def table3(datasets: dict[str, dict[str, Any]]) -> Table:
    """Table III: mean / median token length per field, ours beside the paper's, per task.

    `datasets[task]` holds `lengths` and `cases`; the paper's column counts its whole dataset.
    """
    tasks = sorted(datasets)
    theirs = {task: pub.table3_stats(task) for task in tasks}
    head = ["Field"] + [f"{task.upper()} {who}" for task in tasks for who in ("(ours)", "(published)")]
    t = Table("Table III: dataset statistics (mean / median length in tokens)", head)
    cases = [str(datasets[k].get("cases", "-")) for k in tasks]
    paper = [str((theirs[k].get("input") or {}).get("count", "-")) for k in tasks]
    t.rows.append(["Cases", *(c for pair in zip(cases, paper) for c in pair)])
    for key, label in LENGTH_ROWS:
        cells = [(_length((datasets[k].get("lengths") or {}).get(key)), _length(theirs[k].get(key))) for k in tasks]
        t.rows.append([label, *(c for pair in cells for c in pair)])
    counters = sorted({str(d.get("token_counter")) for d in datasets.values() if d.get("token_counter")})
    t.note = ("Ours: " + ", ".join(counters) + ". " if counters else "") + (
        "Published: the study's whole CNLE / CSNE datasets, each model's own tokenizer "
        f"({pub.source()})."
    )
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
            _order(s),
        )
    )
    for s in rows:
        cells = [metric(s, g, n) for g, _ in GROUPS for n, _ in METRICS] + [metric(s, "fluency")]
        label = editor_label(s)
        if s.get("published"):
            label += f" ({pub.model_label(str(s.get('model')))})"
        elif (s.get("counts") or {}).get("failed"):
            label += f" ({s['counts']['failed']} failed)"
        t.rows.append([_task_of(s).upper(), label, *(_fmt(v) for v in cells)])
        t.classes.append("published" if s.get("published") else "ours")
    return t


def _pairs(summaries: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(str(t).lower(), str(s.get("editor"))) for s in summaries for t in s.get("tasks") or []}


def table4(summaries: list[dict[str, Any]]) -> Table:
    """Table IV: our rows, then the paper's rows of the same (task, editor) for its three models."""
    published = dressed(pub.metric_rows("table4_editors", _pairs(summaries)), summaries)
    t = metric_table("Table IV: every editor on both tasks (x100)", summaries + published)
    t.note = " ".join(x for x in (_published_note(published), budget_note(summaries)) if x)
    return t


def table6(summaries: list[dict[str, Any]]) -> Table:
    """Table VI: the GRACE family and SCOPE (ours), with the paper's rows of its Table VI."""
    published = dressed(pub.metric_rows("table6_agrace", _pairs(summaries)), summaries)
    t = metric_table("Table VI: A-GRACE, GRACE, the ablations and SCOPE (ours) (x100)", summaries + published,
                     GRACE_FAMILY)  # fmt: skip
    t.note = _published_note(published)
    return t


def table5(summaries: list[dict[str, Any]]) -> Table:
    """Table V as the paper computes it: (CSNE - CNLE) / CSNE x 100 of effectiveness EM, per editor.

    Rows: our effectiveness EM on each task and our decrease, then the paper's decrease per model and
    its average row over the three models. A CSNE EM of 0 has no decrease ("-").
    """
    ours = [s for s in summaries if not s.get("published")]
    grid = grid_of(ours)
    theirs = pub.table5_decrease()
    names = roster(ours)
    editors = sorted({e for _, e in grid if e != "none"}, key=lambda e: _order(names[e]))
    t = Table("Table V: decrease (%) of effectiveness EM from CSNE to CNLE",
              ["Row", *(editor_label(names[e]) for e in editors)])  # fmt: skip
    model = next((str(s.get("model")) for s in ours if s.get("model")), "ours")
    for task in ("csne", "cnle"):
        em = [metric(next((s for s in ours if _task_of(s) == task and s.get("editor") == e), {}),
                     "effectiveness", "em") for e in editors]  # fmt: skip
        t.rows.append([f"{task.upper()} effectiveness EM (ours)", *(_fmt(v) for v in em)])
    t.rows.append([f"Decrease % (ours, {model})", *(_fmt(decrease(grid, e)) for e in editors)])
    t.classes = ["ours"] * 3
    for name, row in theirs.items():
        label = "published, average of the three models" if name == "average" else pub.model_label(name)
        t.rows.append([label, *(_fmt(row.get(e)) for e in editors)])
        t.classes.append("published")
    t.note = "Decrease = (CSNE - CNLE) / CSNE x 100. " + _published_note(list(theirs))
    return t


def _fit_minutes(summary: dict[str, Any]) -> float | None:
    """Mean minutes of one fold's fit, over the folds whose saved part recorded it (None: none did)."""
    secs = summary.get("fit_seconds") if isinstance(summary.get("fit_seconds"), dict) else {}
    known = [v for v in (finite_number(x, low=0) for x in secs.values()) if v is not None]
    return statistics.fmean(known) / 60 if known else None


def cost_table(summaries: list[dict[str, Any]]) -> Table:
    """Per editor and task: mean seconds, own peak and resident peak (MiB) of one edit, and a trained
    editor's minutes of fitting per fold (paid once per fold, before its first edit)."""
    t = Table(
        "Cost of one edit (mean over cases)",
        ["Task", "Editor", "Seconds", "Own peak (MiB)", "Resident peak (MiB)", "Fit per fold (min)"],
    )
    for s in sorted(summaries, key=lambda s: (_task_of(s), _order(s))):
        c = s.get("cost") or {}
        mib = [v / 2**20 if (v := finite_number(c.get(k))) is not None else None
               for k in ("mean_peak_bytes", "mean_resident_peak_bytes")]  # fmt: skip
        t.rows.append([_task_of(s).upper(), editor_label(s), _fmt(finite_number(c.get("mean_seconds"))),
                       *(_fmt(v, 1) for v in mib), _fmt(_fit_minutes(s), 1)])  # fmt: skip
        t.classes.append("ours")
    t.note = ("Own peak: memory above what the process held before the edit (the study's measure); resident: "
              "the total. Fit per fold: a trained editor's fitting, once per fold ('-': untrained, or not "
              "recorded by the run that fitted it).")  # fmt: skip
    return t


def _published_note(published: list[Any]) -> str:
    if not published:
        return ""
    return (f"Rows marked (published, MODEL) are the study's figures for its models, not ours and never in "
            f"our averages: {pub.source()}")  # fmt: skip


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
