"""Table IV-style result tables (Markdown and LaTeX) from run summaries.

One table per (model, task); one row per editor; columns: Effectiveness, Generalization and
Specificity (EM / BLEU / ROUGE-L each, x100) and Fluency. Input: the `summary.json` dicts that
`clmedit run` writes (or run directories holding them). Pure formatting: no torch, no model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from clmedit.report import escape
from clmedit.results import OVERLAPPING_FOLDS, load_summaries  # noqa: F401  (re-exported: tables are built from summaries)

GROUPS = (("effectiveness", "Eff."), ("generalization", "Gen."), ("specificity", "Spec."))
METRICS = (("em", "EM"), ("bleu", "BLEU"), ("rouge_l", "RL"))


def metric(summary: dict[str, Any], group: str, name: str | None = None) -> float | None:
    """A metric from summary['metrics'], nested ({'effectiveness': {'em': ..}}) or flat ('effectiveness.em')."""
    m = summary.get("metrics") or {}
    if name is None:
        value = m.get(group)
        return value if isinstance(value, (int, float)) else None
    inner = m.get(group)
    if isinstance(inner, dict) and isinstance(inner.get(name), (int, float)):
        return inner[name]
    for key in (f"{group}.{name}", f"{group}_{name}"):
        if isinstance(m.get(key), (int, float)):
            return m[key]
    return None


def _key(summary: dict[str, Any]) -> tuple[str, str]:
    tasks = summary.get("tasks") if isinstance(summary.get("tasks"), list) else ["?"]
    return str(summary.get("model", "?")), "+".join(str(t).upper() for t in tasks or ["?"])


UNORDERED = 10**6  # a summary without `order` (written before it existed): after the ordered rows


def _order(summary: dict[str, Any]) -> tuple[int, str]:
    """A row's place: the table position its summary carries (`order`, the study's editor order),
    then the editor's name."""
    order = summary.get("order")
    known = isinstance(order, int) and not isinstance(order, bool)
    return (order if known else UNORDERED, str(summary.get("editor", "?")))


def roster(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """editor name -> {"editor", "label", "order"} as our runs' summaries carry them: how a row that
    names only an editor (the paper's, a grid's cell) is labelled and placed."""
    return {str(s.get("editor")): {"editor": str(s.get("editor")), "label": s.get("label"), "order": s.get("order")}
            for s in summaries if not s.get("published")}  # fmt: skip


def dressed(rows: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Published rows with the label and table position of our run of the same editor."""
    names = roster(summaries)
    return [{**names.get(str(r.get("editor")), {}), **r} for r in rows]




def editor_label(summary: dict[str, Any]) -> str:
    """The row label: the summary's own `label` (written by the run), else the editor's name; a
    trained editor fitted on overlapping folds (its test probes among its training inputs) says so."""
    label = summary.get("label")
    label = label if isinstance(label, str) and label else str(summary.get("editor", "?"))
    if summary.get("folds_protocol") == OVERLAPPING_FOLDS:
        label += f" [{OVERLAPPING_FOLDS}]"
    return label


def _case_count(summaries: list[dict[str, Any]]) -> int:
    """Cases of one table: the largest successful count of its rows."""
    return max((int((s.get("counts") or {}).get("ok", 0)) for s in summaries), default=0)


def _rows(summaries: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, list[str]]]]:
    """(model, task) -> [(editor label, formatted cells)] in paper order."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        grouped[_key(s)].append(s)
    table = {}
    for key in sorted(grouped):
        rows = []
        most = _case_count(grouped[key])
        for s in sorted(grouped[key], key=_order):
            cells = [metric(s, g, n) for g, _ in GROUPS for n, _ in METRICS] + [metric(s, "fluency")]
            label = editor_label(s)
            overrides = (s.get("config") or {}).get("hparams") or {}
            if overrides:  # two runs of one editor with different --hp must not look alike
                label += " (" + ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) + ")"
            counts = s.get("counts") or {}
            if counts.get("failed"):
                label += f" ({counts['failed']} failed)"
            scored = int(counts.get("cases", counts.get("ok", 0)))
            if scored < most:  # a row scored on fewer cases than the table's heading says
                label += f" ({scored} cases)"
            rows.append((label, ["-" if v is None else f"{v:.2f}" for v in cells]))
        table[key] = rows
    return table


def budget_note(summaries: list[dict[str, Any]]) -> str:
    """How many scored cases have a generation budget shorter than the target after the prompt, per task.

    EM cannot be 1 on those (eval.protocol); "" when no summary recorded the count (older runs).
    """
    rows = [s for s in summaries if not s.get("published") and "budget_short" in (s.get("counts") or {})]
    if not rows:
        return ""
    rules = sorted({str((s.get("config") or {}).get("budget", "study")) for s in rows})
    parts = []
    for task in sorted({_key(s)[1] for s in rows}):
        counts: dict[str, list[str]] = defaultdict(list)
        for s in sorted((s for s in rows if _key(s)[1] == task), key=_order):
            c = s["counts"]
            counts[f"{c['budget_short']} of {c.get('ok', 0)}"].append(editor_label(s))
        main = max(counts, key=lambda k: len(counts[k]))  # the count most rows share; the others named
        rest = [f"{' / '.join(v)}: {k}" for k, v in counts.items() if k != main]
        parts.append(f"{task}: {main} cases" + (f" ({'; '.join(rest)})" if rest else " in every row"))
    rule = " and ".join("len(tok.encode(target)), the study's" if r == "study" else r for r in rules)
    return (f"Generation budget {rule}: shorter than the target's tokens after the prompt or rephrase "
            f"(EM cannot be 1) in " + "; ".join(parts) + ".")  # fmt: skip


def render_markdown(summaries: list[dict[str, Any]]) -> str:
    """Markdown tables, one per (model, task), headed `### model — TASK (n cases)`."""
    head = ["Editor"] + [f"{short} {m}" for _, short in GROUPS for _, m in METRICS] + ["Fluency"]
    out = []
    for (model, task), rows in _rows(summaries).items():
        count = _case_count([s for s in summaries if _key(s) == (model, task)])
        out.append(f"### {escape.markdown(model)} — {escape.markdown(task)} ({count} cases)\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        out.extend("| " + " | ".join([escape.markdown(label), *cells]) + " |" for label, cells in rows)
        note = budget_note([s for s in summaries if _key(s) == (model, task)])
        out += ["", note, ""] if note else [""]
    return "\n".join(out).rstrip()


def render_latex(summaries: list[dict[str, Any]]) -> str:
    """A booktabs LaTeX table per (model, task), the best value of each column in bold."""
    out = []
    for (model, task), rows in _rows(summaries).items():
        best = []
        for j in range(10):
            vals = [float(c[j]) for _, c in rows if c[j] != "-"]
            best.append(max(vals) if vals else None)
        out += [
            r"\begin{table}[t]\centering",
            rf"\caption{{{_tex(model)} on {_tex(task)}}}",
            r"\begin{tabular}{l" + "r" * 10 + "}",
            r"\toprule",
            r" & \multicolumn{3}{c}{Effectiveness} & \multicolumn{3}{c}{Generalization}"
            r" & \multicolumn{3}{c}{Specificity} & \\",
            r"Editor" + " & EM & BLEU & RL" * 3 + r" & Fluency \\",
            r"\midrule",
        ]
        for label, cells in rows:
            shown = [
                rf"\textbf{{{c}}}" if c != "-" and float(c) == best[j] else c for j, c in enumerate(cells)
            ]
            out.append(_tex(label) + " & " + " & ".join(shown) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out).rstrip()


def _tex(text: str) -> str:
    return escape.latex(text)
