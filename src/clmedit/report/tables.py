"""Table IV-style result tables (Markdown and LaTeX) from run summaries.

One table per (model, task); one row per editor; columns: Effectiveness, Generalization and
Specificity (EM / BLEU / ROUGE-L each, x100) and Fluency. Input: the `summary.json` dicts that
`clmedit run` writes (or run directories holding them). Pure formatting: no torch, no model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clmedit.editors.registry import editor_label, table_order

GROUPS = (("effectiveness", "Eff."), ("generalization", "Gen."), ("specificity", "Spec."))
METRICS = (("em", "EM"), ("bleu", "BLEU"), ("rouge_l", "RL"))


def load_summaries(run_dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """summary.json of each run directory (directories are searched recursively)."""
    found = []
    for d in run_dirs:
        d = Path(d)
        paths = [d] if d.is_file() else sorted(d.rglob("summary.json"))
        if not paths:
            raise FileNotFoundError(f"{d}: no summary.json found (is it a `clmedit run` output directory?)")
        for p in paths:
            summary = json.loads(p.read_text())
            summary.setdefault("run_dir", str(p.parent))
            found.append(summary)
    return found


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
    tasks = summary.get("tasks") or ["?"]
    return str(summary.get("model", "?")), "+".join(t.upper() for t in tasks)


def _order(editor: str) -> tuple[int, str]:
    return table_order(editor)


def label_of(summary: dict[str, Any]) -> str:
    """The editor's display label: as the run wrote it into summary.json, else the registry's."""
    return str(summary.get("label") or editor_label(str(summary.get("editor", "?"))))


def _rows(summaries: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, list[str]]]]:
    """(model, task) -> [(editor label, formatted cells)] in paper order."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        grouped[_key(s)].append(s)
    table = {}
    for key in sorted(grouped):
        rows = []
        for s in sorted(grouped[key], key=lambda s: _order(str(s.get("editor", "?")))):
            cells = [metric(s, g, n) for g, _ in GROUPS for n, _ in METRICS] + [metric(s, "fluency")]
            label = label_of(s)
            overrides = (s.get("config") or {}).get("hparams") or {}
            if overrides:  # two runs of one editor with different --hp must not look alike
                label += " (" + ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) + ")"
            counts = s.get("counts") or {}
            if counts.get("failed"):
                label += f" ({counts['failed']} failed)"
            rows.append((label, ["-" if v is None else f"{v:.2f}" for v in cells]))
        table[key] = rows
    return table


def render_markdown(summaries: list[dict[str, Any]]) -> str:
    """Markdown tables, one per (model, task), headed `### model — TASK (n cases)`."""
    head = ["Editor"] + [f"{short} {m}" for _, short in GROUPS for _, m in METRICS] + ["Fluency"]
    out = []
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for s in summaries:  # cases per table: the largest successful count of its rows
        counts[_key(s)] = max(counts[_key(s)], int((s.get("counts") or {}).get("ok", 0)))
    for (model, task), rows in _rows(summaries).items():
        out.append(f"### {model} — {task} ({counts[(model, task)]} cases)\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        out.extend("| " + " | ".join([label, *cells]) + " |" for label, cells in rows)
        out.append("")
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
    return "".join("\\" + ch if ch in "&%$#_{}" else ch for ch in text)
