"""Sequential (lifelong) editing runs: the checkpoint table and the curves against the number of edits.

From the `summary.json` of sequential runs (`mode: sequential`, written by `lifelong.sequence`) and
their `edits.jsonl`:
- `render_checkpoints`: a Markdown table per (model, task): one row per (run, checkpoint) with
  retention (effectiveness), generalization and specificity EM x100, fluency, how many cases
  specificity covers and how many neighbours were excluded, median seconds per edit since the
  previous checkpoint, resident memory.
- `sequential_figures`: `sequential_quality.png` (retention, generalization, specificity EM against
  the number of edits, one line per run, complete checkpoints only; x logarithmic when the
  checkpoints span two decades) and `sequential_cost.png` (seconds per edit and resident memory
  after each apply call against the number of edits, x linear).

Reads results files only (`clmedit.results`): no torch, no runner.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from clmedit.report import escape
from clmedit.report.figures import _plt, _save
from clmedit.report.tables import _order, editor_label
from clmedit.results import per_edit_seconds, read_edits

log = logging.getLogger(__name__)

QUALITY = (("effectiveness", "retention EM"), ("generalization", "generalization EM"),
           ("specificity", "specificity EM"))  # fmt: skip
MIB = 2**20


def is_sequential(summary: dict[str, Any]) -> bool:
    return summary.get("mode") == "sequential"


def run_label(summary: dict[str, Any], with_task: bool = False) -> str:
    """The editor's label, with the batch size when edits were batched (and the task when asked)."""
    label = editor_label(summary)
    batch = ((summary.get("sequential") or {}).get("batch_size")) or 1
    if batch > 1:
        label += f" (batch {batch})"
    if with_task:
        label += " — " + "+".join(str(t).upper() for t in summary.get("tasks") or ["?"])
    return label


def checkpoints(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = (summary.get("sequential") or {}).get("checkpoints")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def em(row: dict[str, Any], group: str) -> float | None:
    """A checkpoint row's EM (x100) of `group`; None when not measured."""
    value = ((row.get("metrics") or {}).get(group) or {}).get("em")
    return value if isinstance(value, (int, float)) else None


def _cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def render_checkpoints(summaries: list[dict[str, Any]]) -> str:
    """The checkpoint tables (see module doc) of the sequential runs among `summaries`."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in filter(is_sequential, summaries):
        task = "+".join(str(t).upper() for t in s.get("tasks") or ["?"])
        grouped[(str(s.get("model", "?")), task)].append(s)
    head = ("| Editor | Edits | In model | Retention EM | Gen. EM | Spec. EM | Fluency | Spec. cases "
            "| Excluded neighbours | s / edit | RSS (MiB) |\n|---|" + "---:|" * 10)  # fmt: skip
    parts = []
    for (model, task), runs in sorted(grouped.items()):
        lines = [f"### Sequential editing: {escape.markdown(model)} — {escape.markdown(task)}", "", head]
        for s in sorted(runs, key=lambda s: (_order(s), run_label(s))):
            for r in checkpoints(s):
                flu = (r.get("metrics") or {}).get("fluency")
                rss = r.get("rss_bytes")
                edits = f"{r.get('edits')}" + ("" if r.get("complete") else " (incomplete)")
                cells = [escape.markdown(run_label(s)), edits, str(r.get("applied", "-")),
                         *(_cell(em(r, g)) for g, _ in QUALITY), _cell(flu),
                         str(r.get("specificity_cases", "-")), str(r.get("neighbours_excluded", "-")),
                         _cell(r.get("seconds_per_edit"), "{:.3f}"), _cell(None if rss is None else rss / MIB, "{:.0f}")]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "No sequential runs."


def quality_series(summary: dict[str, Any], group: str) -> tuple[list[int], list[float]]:
    """(edits, EM x100) at the complete checkpoints of a run that measured `group`."""
    pts = [(int(r["edits"]), em(r, group)) for r in checkpoints(summary) if r.get("complete")]
    pts = [(x, y) for x, y in pts if y is not None]
    return [x for x, _ in pts], [y for _, y in pts]


def cost_series(run_dir: str | Path) -> dict[str, list[float]]:
    """Per successful apply call: edits so far and seconds per edit; resident MiB after every call
    (at `rss_edits`, starting at 0 edits with the RSS before the first call) and device MiB on a GPU."""
    out: dict[str, list[float]] = {"edits": [], "seconds_per_edit": [], "rss_edits": [], "rss_mib": [],
                                   "device_mib": []}  # fmt: skip
    calls = read_edits(run_dir)
    if calls and calls[0].get("rss_before_bytes") is not None:
        out["rss_edits"].append(0)
        out["rss_mib"].append(calls[0]["rss_before_bytes"] / MIB)
    for rec in calls:
        if rec.get("rss_bytes") is not None:
            out["rss_edits"].append(int(rec["edits"]))
            out["rss_mib"].append(rec["rss_bytes"] / MIB)
        secs = per_edit_seconds(rec)
        if secs is None:
            continue
        out["edits"].append(int(rec["edits"]))
        out["seconds_per_edit"].append(secs)
        if rec.get("device_bytes") is not None:
            out["device_mib"].append(rec["device_bytes"] / MIB)
    return out


def rolling_median(values: list[float], window: int) -> np.ndarray:
    """Median of each value with the `window - 1` before it (fewer at the start)."""
    v = np.asarray(values, dtype=np.float64)
    return np.array([np.median(v[max(0, i - window + 1) : i + 1]) for i in range(len(v))])


def sequential_figures(summaries: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """sequential_quality.png and sequential_cost.png for the sequential runs (each skipped without data)."""
    runs = sorted(
        filter(is_sequential, summaries), key=lambda s: (_order(s), run_label(s))
    )
    if not runs:
        return []
    plt, out_dir = _plt(), Path(out_dir)
    with_task = len({tuple(s.get("tasks") or []) for s in runs}) > 1
    written = []
    series = [(run_label(s, with_task), {g: quality_series(s, g) for g, _ in QUALITY}) for s in runs]
    if any(xs for _, q in series for xs, _ in q.values()):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), squeeze=False)
        for ax, (group, title) in zip(axes[0], QUALITY):
            for c, (label, q) in enumerate(series):
                xs, ys = q[group]
                if xs:
                    ax.plot(xs, ys, marker="o", color=f"C{c}", label=label)
            _edits_axis(ax, [x for _, q in series for x in q[group][0]])
            ax.set_ylim(-3, 103)
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("EM (x100)")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "sequential_quality.png"))
    costs = [(run_label(s, with_task), cost_series(s["run_dir"])) for s in runs if s.get("run_dir")]
    costs = [(label, c) for label, c in costs if c["edits"] or c["rss_edits"]]
    if costs:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
        sec_ax, mem_ax = axes[0]
        for c, (label, data) in enumerate(costs):
            window = max(1, len(data["edits"]) // 50)
            sec_ax.plot(data["edits"], data["seconds_per_edit"], color=f"C{c}", alpha=0.3, lw=0.8)
            sec_ax.plot(data["edits"], rolling_median(data["seconds_per_edit"], window), color=f"C{c}",
                        label=label + (f" (median of {window})" if window > 1 else ""))  # fmt: skip
            mem_ax.plot(data["rss_edits"], data["rss_mib"], color=f"C{c}", label=f"{label}: resident")
            if len(data["device_mib"]) == len(data["edits"]):
                mem_ax.plot(data["edits"], data["device_mib"], color=f"C{c}", ls="--", label=f"{label}: GPU")
        for ax, title, unit in (
            (sec_ax, "seconds per edit", "seconds"),
            (mem_ax, "memory after each edit", "MiB"),
        ):
            ax.set_xlabel("number of edits")  # linear: growth per edit reads as it is
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(unit)
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "sequential_cost.png"))
    return written


def _edits_axis(ax, xs: list[int]) -> None:
    """x = number of edits; logarithmic when the checkpoints span two decades or more."""
    ax.set_xlabel("number of edits")
    if xs and max(xs) / max(1, min(xs)) >= 100:
        ax.set_xscale("log")
