"""The study's figures as PNG files (matplotlib, Agg backend); each is skipped when its data is missing.

- Fig. 3/4 (`cost_bars`): mean seconds and mean own peak memory of one edit, per editor, a bar per task.
- Fig. 2/5 (`distance_envelope`): per case (sorted by it), the key distance prompt -> rephrase, and
  prompt -> neighbours as their mean with a +-std envelope over the five; the overall mean +- std of
  each in the legend, and the edit's own entry radius (dashed) where recorded. From each record's
  `info["distances"] = {"rephrase": d, "neighbours": [d, ...], "radius": r}`.
- Fig. 6 (`key_pca`): keys of a few cases (prompt, rephrase, neighbours; one colour per case) on the
  first two principal components, one panel per run (GRACE's last-token keys, A-GRACE's encoded mean).
  From `info["keys"] = {"prompt": [d], "rephrase": [d], "neighbours": [[d], ...]}`.

Reads records and summaries only (`clmedit.results`); every file name is slugged and lies in `out_dir`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clmedit.files import slug
from clmedit.report.tables import _order, editor_label, roster
from clmedit.results import CaseRecord, read_records

log = logging.getLogger(__name__)
TASK_COLOURS = {"cnle": "#4c72b0", "csne": "#dd8452"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    # labels are dataset/model/results text, never formulas: a `$` must not start mathtext
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _task(summary: dict[str, Any]) -> str:
    tasks = summary.get("tasks") if isinstance(summary.get("tasks"), list) else []
    return "+".join(str(t).lower() for t in tasks) or "?"


def cost_bars(summaries: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """fig3_time.png (mean seconds per edit) and fig4_memory.png (mean own peak, MiB): editor x task bars."""
    plt, out_dir = _plt(), Path(out_dir)
    rows = [s for s in summaries if isinstance(s.get("cost"), dict) and not s.get("published")]
    names = roster(rows)
    editors = sorted(names, key=lambda e: _order(names[e]))
    tasks = sorted({_task(s) for s in rows})
    written = []
    for stem, key, scale, ylabel in (
        ("fig3_time", "mean_seconds", 1.0, "seconds"),
        ("fig4_memory", "mean_peak_bytes", 1 / 2**20, "own peak memory (MiB)"),
    ):
        value = {(str(s.get("editor")), _task(s)): s["cost"].get(key) for s in rows}
        if not any(isinstance(v, (int, float)) for v in value.values()):
            log.info("%s skipped: no %s recorded", stem, key)
            continue
        fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(editors), 3.4))
        width = 0.8 / max(1, len(tasks))
        for j, task in enumerate(tasks):
            ys = [value.get((e, task)) for e in editors]
            ax.bar(np.arange(len(editors)) + (j - (len(tasks) - 1) / 2) * width,
                   [0.0 if y is None else y * scale for y in ys], width, label=task.upper(),
                   color=TASK_COLOURS.get(task, f"C{j}"))  # fmt: skip
        labels = {str(s.get("editor")): editor_label(s) for s in rows}
        ax.set_xticks(np.arange(len(editors)), [labels[e] for e in editors], rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(f"mean {ylabel} of one edit", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{stem}.png"))
    return written


def distance_envelope(records: list[CaseRecord], out_path: str | Path, title: str = "") -> Path | None:
    """Per case: prompt->rephrase distance (line) and prompt->neighbours mean +- std (band); None if no data."""
    rows = []
    for r in records:
        d = r.info.get("distances")
        if isinstance(d, dict) and isinstance(d.get("rephrase"), (int, float)):
            nb = [float(x) for x in d.get("neighbours") or [] if isinstance(x, (int, float))]
            radius = float(d["radius"]) if isinstance(d.get("radius"), (int, float)) else np.nan
            rows.append((float(d["rephrase"]), nb, radius))
    if not rows:
        return None
    plt = _plt()
    rows.sort(key=lambda r: r[0])
    x = np.arange(len(rows))
    reph = np.array([r[0] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(x, reph, color="#dd8452", label=f"prompt → rephrase ({reph.mean():.2f} ± {reph.std():.2f})")
    if any(nb for _, nb, _ in rows):
        mu = np.array([np.mean(nb) if nb else np.nan for _, nb, _ in rows])
        sd = np.array([np.std(nb) if nb else np.nan for _, nb, _ in rows])
        flat = np.array([v for _, nb, _ in rows for v in nb])
        ax.plot(x, mu, color="#4c72b0", label=f"prompt → neighbours ({flat.mean():.2f} ± {flat.std():.2f})")
        ax.fill_between(x, mu - sd, mu + sd, alpha=0.3, color="#4c72b0", lw=0)
    radii = np.array([r for _, _, r in rows])
    if not np.isnan(radii).all():  # the edit's own radius: a match is a distance at or below it
        ax.plot(x, radii, color="#555555", lw=0.8, ls="--", label=f"entry radius ({np.nanmean(radii):.2f} mean)")
    ax.xaxis.set_major_locator(_plt().MaxNLocator(integer=True))  # cases are whole: no tick at 2.5
    ax.set_xlabel("case (sorted by rephrase distance)")
    ax.set_ylabel("key distance")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def _case_keys(records: list[CaseRecord], n_cases: int) -> list[dict[str, Any]]:
    out = []
    for r in sorted(records, key=lambda r: r.case_id):
        keys = r.info.get("keys")
        if isinstance(keys, dict) and isinstance(keys.get("prompt"), list):
            out.append(keys)
        if len(out) == n_cases:
            break
    return out


def key_pca(
    panels: list[tuple[str, list[CaseRecord]]], out_path: str | Path, n_cases: int = 4
) -> Path | None:
    """One panel per (title, records): a few cases' keys on the panel's first two principal components."""
    panels = [(t, _case_keys(recs, n_cases)) for t, recs in panels]
    panels = [(t, ks) for t, ks in panels if ks]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4), squeeze=False)
    for ax, (title, cases) in zip(axes[0], panels):
        groups = [
            [k["prompt"], k.get("rephrase") or k["prompt"], *(k.get("neighbours") or [])] for k in cases
        ]
        flat = [v for g in groups for v in g]
        if len({len(v) for v in flat}) != 1 or len(flat) < 3:
            continue
        allk = np.asarray(flat, dtype=np.float64)
        mean = allk.mean(0)
        _, _, vt = np.linalg.svd(allk - mean, full_matrices=False)  # rows of vt: principal axes
        for c, g in enumerate(groups):
            xy = (np.asarray(g, dtype=np.float64) - mean) @ vt[:2].T
            colour = f"C{c}"
            ax.scatter(
                xy[0, 0], xy[0, 1], marker="*", s=160, color=colour, label="prompt" if c == 0 else None
            )
            ax.scatter(
                xy[1, 0], xy[1, 1], marker="^", s=60, color=colour, label="rephrase" if c == 0 else None
            )
            if len(xy) > 2:
                ax.scatter(xy[2:, 0], xy[2:, 1], marker="o", s=20, color=colour, alpha=0.6,
                           label="neighbours" if c == 0 else None)  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def all_figures(summaries: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Every figure the data allows, all inside `out_dir` under slugged names.

    Fig. 2/5 per run with distances (`distances_<task>_<editor>.png`), Fig. 6 over the GRACE-family
    runs of each task (`fig6_keys_<task>.png`), Fig. 3/4 over all runs.
    """
    out_dir = Path(out_dir)
    written = cost_bars(summaries, out_dir)
    pca: dict[str, list[tuple[str, list[CaseRecord]]]] = {}
    for s in sorted(summaries, key=lambda s: (_task(s), _order(s))):
        if not s.get("run_dir"):
            continue
        recs = read_records(s["run_dir"])
        task, name = _task(s), editor_label(s)
        path = distance_envelope(recs, out_dir / f"distances_{slug(task)}_{slug(str(s.get('editor')))}.png",
                                 title=f"{name} — {task.upper()}: key distances")  # fmt: skip
        if path is not None:
            written.append(path)
        kind = {"grace": "last-token keys", "agrace": "encoded mean keys"}.get(str(s.get("editor")))
        if kind:
            pca.setdefault(task, []).append((f"{name}: {kind} — {task.upper()}", recs))
    for task, panels in sorted(pca.items()):
        path = key_pca(panels, out_dir / f"fig6_keys_{slug(task)}.png")
        if path is not None:
            written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path
