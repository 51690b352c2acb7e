"""The study's report from a `clmedit study` folder: tables (Markdown + LaTeX) with the paper's published
rows beside ours, the findings checked on this run (findings.md/.tex), figures (PNG), report.html.

Reads results files only: `study.json` (the grid, sizes, dataset statistics), each run's
`summary.json` and `cases*.jsonl`, and the study's slim case files. Everything is written inside
`out`, under fixed or slugged names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from clmedit.data.schema import iter_jsonl
from clmedit.files import atomic_write_text
from clmedit.report import findings as fd
from clmedit.report import study_tables as st
from clmedit.report.figures import all_figures
from clmedit.report.html import render_page
from clmedit.report.tables import editor_label
from clmedit.results import CaseRecord, load_summaries, read_records

log = logging.getLogger(__name__)
CHECKS = (("effectiveness", "eff"), ("generalization", "gen"), ("specificity", "spec"))


def _inside(root: Path, rel: str) -> Path | None:
    """`root/rel` when it stays inside `root` (a manifest never points elsewhere), else None."""
    path = (root / str(rel)).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def study_runs(study_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The summaries of the study's finished runs (runs without a summary yet are left out)."""
    out = []
    for run in manifest.get("runs") or []:
        d = _inside(study_dir, run.get("dir", ""))
        if d is not None and (d / "summary.json").is_file():
            out += load_summaries([d / "summary.json"])
    return out


def failed_checks(rec: CaseRecord) -> list[str]:
    if not rec.ok:
        return ["error"]
    return [short for group, short in CHECKS if getattr(rec.scores, group).em < 1]


def browser_cases(
    study_dir: Path, manifest: dict[str, Any], summaries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per case of the study's case files: its texts and, per editor label, outputs/scores/failed checks."""
    by_case: dict[tuple[str, str], dict[str, Any]] = {}
    for task, ds in sorted((manifest.get("datasets") or {}).items()):
        path = _inside(study_dir, ds.get("cases_file", ""))
        if path is None or not path.is_file():
            continue
        for c in iter_jsonl(path):
            by_case[(task, str(c.get("case_id")))] = {
                **c,
                "task": task,
                "case_id": str(c.get("case_id")),
                "runs": {},
            }
    for s in summaries:
        label, task = editor_label(s), "+".join(s.get("tasks") or [])
        for rec in read_records(s["run_dir"]):
            case = by_case.get((task, rec.case_id))
            if case is not None:
                scores = rec.scores.model_dump(mode="json", exclude={"outputs"}) if rec.scores else {}
                outputs = rec.scores.outputs.model_dump(mode="json") if rec.scores else {}
                case["runs"][label] = {"outputs": outputs, "scores": scores, "error": rec.error,
                                       "failed": failed_checks(rec)}  # fmt: skip
    return [c for c in by_case.values() if c["runs"]]


def write_study_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write every table, figure and report.html of the study in `study_dir` into `out`; returns the page."""
    study_dir = Path(study_dir)
    manifest_path = study_dir / "study.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{study_dir}: no study.json (is it a `clmedit study` output folder?)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    out = Path(out) if out is not None else study_dir
    summaries = study_runs(study_dir, manifest)
    tables = {
        "table3": st.table3(manifest.get("datasets") or {}),
        "table4": st.table4(summaries),
        "table5": st.table5(summaries),
        "table6": st.table6(summaries),
        "cost": st.cost_table(summaries),
    }
    for stem, t in tables.items():
        atomic_write_text(out / f"{stem}.md", st.markdown(t) + "\n")
        atomic_write_text(out / f"{stem}.tex", st.latex(t) + "\n")
    found, model = fd.findings(summaries), str(manifest.get("model"))
    atomic_write_text(out / "findings.md", fd.markdown(found, model) + "\n")
    atomic_write_text(out / "findings.tex", fd.latex(found, model) + "\n")
    atomic_write_text(out / "tables.md", "\n\n".join([*(st.markdown(t) for t in tables.values()),
                                                       fd.markdown(found, model)]) + "\n")  # fmt: skip
    figures = all_figures(summaries, out / "figures")
    captions = [(_caption(p.stem), p) for p in figures]
    header = [
        f"Model: {manifest.get('model')} — tasks: {', '.join(t.upper() for t in manifest.get('tasks') or [])}"
        f" — {len(summaries)} of {len(manifest.get('runs') or [])} runs finished.",
        f"Size: {manifest.get('size', '?')}. {manifest.get('size_note', '')}",
    ]
    if manifest.get("failed_runs"):
        header.append("FAILED runs (rerun the study to retry): " + "; ".join(map(str, manifest["failed_runs"])))
    if manifest.get("wall_seconds"):
        header.append(f"Wall time of the last invocation: {manifest['wall_seconds'] / 60:.1f} min.")
    if st.budget_note(summaries):
        header.append(st.budget_note(summaries))
    page = render_page("clmedit study — " + str(manifest.get("model")), header, list(tables.values()),
                       captions, browser_cases(study_dir, manifest, summaries), findings=found)  # fmt: skip
    return atomic_write_text(out / "report.html", page)


def _caption(stem: str) -> str:
    if stem == "fig3_time":
        return "Fig. 3: mean edit time per editor and task"
    if stem == "fig4_memory":
        return "Fig. 4: mean own peak memory of an edit per editor and task"
    if stem.startswith("fig6_keys_"):
        return f"Fig. 6: PCA of keys, last-token (GRACE) vs encoded mean (A-GRACE), {stem[10:].upper()}"
    if stem.startswith("distances_"):
        task, _, editor = stem[10:].partition("_")
        fig = {"grace": "Fig. 2", "agrace": "Fig. 5"}.get(editor, "Fig. 2/5")
        return f"{fig}: key distances prompt→rephrase vs prompt→neighbours, {editor}, {task.upper()}"
    return stem
