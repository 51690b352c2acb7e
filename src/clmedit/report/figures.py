"""The study's figures as PNG files (matplotlib, Agg backend): each is skipped when its data is missing.

- Cost bars (Fig. 3/4): median seconds and peak memory of one apply call, per editor.
- Distance envelopes (Fig. 2/5): per case, the key distance edit prompt -> rephrase and
  edit prompt -> neighbours (min..max band), sorted by the rephrase distance, with the radius if given.
  Read from each record's `info["distances"] = {"rephrase": float, "neighbours": [float, ...], "radius": float}`.
- PCA of keys (Fig. 6): `info["keys"] = {"prompt": [d], "rephrase": [d], "neighbours": [[d], ...]}`,
  projected on the first two principal components of all keys of the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clmedit.files import slug
from clmedit.report.tables import _key, _order, label_of

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cost_bars(summaries: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per (model, task): median apply seconds and peak memory (MiB) per editor."""
    plt, out_dir, written = _plt(), Path(out_dir), []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in summaries:
        groups.setdefault(_key(s), []).append(s)
    for (model, task), rows in sorted(groups.items()):
        rows = [r for r in sorted(rows, key=lambda r: _order(str(r.get("editor")))) if r.get("cost")]
        secs = [r["cost"].get("median_seconds") for r in rows]
        mem = [r["cost"].get("median_peak_bytes") for r in rows]
        if not rows or all(v is None for v in secs):
            log.info("cost bars for %s/%s skipped: no cost recorded", model, task)
            continue
        labels = [label_of(r) for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(2 + 1.1 * len(rows) * 2, 3.2))
        for ax, vals, title in ((axes[0], secs, "seconds per edit"), (axes[1], mem, "peak memory (MiB)")):
            scale = 1 / 2**20 if "MiB" in title else 1.0
            ax.bar(labels, [0.0 if v is None else v * scale for v in vals], color="#4c72b0")
            ax.set_title(title)
            ax.tick_params(axis="x", rotation=30)
        fig.suptitle(f"{model} — {task}")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"cost_{slug(model)}_{task.lower()}.png"))
    return written


def distance_envelope(records: list[dict[str, Any]], out_path: str | Path, title: str = "") -> Path | None:
    """Sorted per-case distances prompt->rephrase (line) and prompt->neighbours (band); None if no data."""
    rows = [
        r["info"]["distances"] for r in records if isinstance((r.get("info") or {}).get("distances"), dict)
    ]
    rows = [d for d in rows if isinstance(d.get("rephrase"), (int, float))]
    if not rows:
        return None
    plt = _plt()
    rows.sort(key=lambda d: d["rephrase"])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(x, [d["rephrase"] for d in rows], label="prompt → rephrase", color="#dd8452")
    nb = [d.get("neighbours") or [] for d in rows]
    if any(nb):
        lo = [min(n) if n else np.nan for n in nb]
        hi = [max(n) if n else np.nan for n in nb]
        ax.fill_between(x, lo, hi, alpha=0.3, color="#4c72b0", label="prompt → neighbours")
    radii = [d["radius"] for d in rows if isinstance(d.get("radius"), (int, float))]
    if radii:
        ax.axhline(float(np.median(radii)), ls="--", color="k", lw=1, label="radius (median)")
    ax.set_xlabel("case (sorted by rephrase distance)")
    ax.set_ylabel("key distance")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def key_pca(records: list[dict[str, Any]], out_path: str | Path, title: str = "") -> Path | None:
    """Scatter of prompt / rephrase / neighbour keys on their first two principal components."""
    pts: dict[str, list[list[float]]] = {"prompt": [], "rephrase": [], "neighbours": []}
    for r in records:
        keys = (r.get("info") or {}).get("keys")
        if not isinstance(keys, dict):
            continue
        for kind in ("prompt", "rephrase"):
            if isinstance(keys.get(kind), list):
                pts[kind].append(keys[kind])
        pts["neighbours"].extend(k for k in keys.get("neighbours") or [] if isinstance(k, list))
    flat = [v for vs in pts.values() for v in vs]
    if len(flat) < 3 or len({len(v) for v in flat}) != 1:
        return None
    plt = _plt()
    allk = np.asarray(flat, dtype=np.float64)
    mean = allk.mean(0)
    _, _, vt = np.linalg.svd(allk - mean, full_matrices=False)  # rows of vt: principal axes
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for kind, color in (("neighbours", "#4c72b0"), ("rephrase", "#dd8452"), ("prompt", "#55a868")):
        if pts[kind]:
            xy = (np.asarray(pts[kind]) - mean) @ vt[:2].T
            ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.7, label=kind, color=color)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def all_figures(summaries: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Every figure the data allows; the per-run figures go beside each run's summary."""
    from clmedit.run.records import read_records

    written = cost_bars(summaries, out_dir)
    for s in summaries:
        if "run_dir" not in s:
            continue
        recs = read_records(s["run_dir"])
        name = f"{s.get('editor', '?')} — {'+'.join(s.get('tasks') or [])}"
        for fn, stem in ((distance_envelope, "distances"), (key_pca, "keys_pca")):
            path = fn(recs, Path(s["run_dir"]) / f"{stem}.png", title=name)
            if path is None:
                log.info("%s: no %s in the records' info; figure skipped", s["run_dir"], stem)
            else:
                written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path
