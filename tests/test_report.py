"""Tables rendered from summaries equal hand-written ones; figures appear when their data exists."""

from __future__ import annotations

import json

from clmedit.report.figures import all_figures, cost_bars, distance_envelope, key_pca
from clmedit.report.tables import load_summaries, render_latex, render_markdown
from clmedit.results import CaseRecord
from clmedit.run.summary import row_facts


def _summary(editor: str, eff: float, fluency: float | None, failed: int = 0) -> dict:
    triple = {"em": eff, "bleu": eff / 2, "rouge_l": 12.345}
    return {
        "editor": editor,
        "model": "m",
        "tasks": ["cnle"],
        "counts": {"cases": 4, "ok": 4 - failed, "failed": failed},
        "metrics": {
            "effectiveness": triple,
            "generalization": triple,
            "specificity": triple,
            "fluency": fluency,
        },
        "cost": {"median_seconds": 0.5, "median_peak_bytes": 2**21},
        **row_facts(editor),  # the label and table position a run writes
    }


EXPECTED = """\
### m — CNLE (4 cases)

| Editor | Eff. EM | Eff. BLEU | Eff. RL | Gen. EM | Gen. BLEU | Gen. RL | Spec. EM | Spec. BLEU | Spec. RL | Fluency |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| Unedited | 0.00 | 0.00 | 12.35 | 0.00 | 0.00 | 12.35 | 0.00 | 0.00 | 12.35 | 512.00 |
| GRACE (1 failed) | 100.00 | 50.00 | 12.35 | 100.00 | 50.00 | 12.35 | 100.00 | 50.00 | 12.35 | - |"""


def test_markdown_table_matches_hand_written():
    # rows come in the paper's order (unedited first) whatever the input order
    summaries = [_summary("grace", 100.0, None, failed=1), _summary("none", 0.0, 512.0)]
    assert render_markdown(summaries) == EXPECTED


def test_runs_with_hparam_overrides_are_labelled_apart():
    tuned = {**_summary("malmen", 5.0, None), "config": {"hparams": {"loc_coef": 10, "steps": 50}}}
    table = render_markdown([_summary("malmen", 50.0, None), tuned])
    assert "| MALMEN | 50.00 |" in table and "| MALMEN (loc_coef=10, steps=50) | 5.00 |" in table


def test_row_label_and_place_come_from_the_summary_alone():
    own = {**_summary("myedit", 1.0, None), "label": "MyEdit v2", "order": -1}  # an editor only its run knew
    bare = {k: v for k, v in _summary("agrace-last", 2.0, None).items() if k not in ("label", "order")}
    table = render_markdown([_summary("grace", 4.0, None), bare, own, _summary("unknown-editor", 3.0, None)])
    assert "| A-GRACE w/o mean |" not in table  # a summary without a label shows its editor's name
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| MyEdit v2", "| GRACE", "| unknown-editor", "| agrace-last"]


def test_a_row_scored_on_fewer_cases_says_how_many():
    short = {**_summary("agrace", 5.0, None), "counts": {"cases": 2, "ok": 2, "failed": 0}}
    table = render_markdown([_summary("grace", 100.0, None, failed=1), _summary("scope", 9.0, None), short])
    assert "### m — CNLE (4 cases)" in table
    assert "| A-GRACE (2 cases) | 5.00 |" in table  # ran on 2 of the table's 4
    assert "| GRACE (1 failed) | 100.00 |" in table and "| SCOPE (ours) | 9.00 |" in table


def test_flat_metric_keys_are_read_too():
    flat = {
        "editor": "ft",
        "model": "m",
        "tasks": ["csne"],
        "counts": {"ok": 1},
        "metrics": {"effectiveness.em": 7},
        **row_facts("ft"),
    }
    assert "| FT-L | 7.00 | - |" in render_markdown([flat])


def test_latex_bolds_the_best_and_escapes():
    tex = render_latex([_summary("grace", 100.0, 1.0), _summary("none", 0.0, 2.0)])
    assert r"\textbf{100.00}" in tex and r"\textbf{2.00}" in tex
    assert r"\begin{tabular}{lrrrrrrrrrr}" in tex and tex.count(r"\\") >= 4


def test_load_summaries_searches_run_dirs(tmp_path):
    for editor in ("none", "grace"):
        d = tmp_path / "cnle" / editor
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(_summary(editor, 1.0, 1.0)))
    found = load_summaries([tmp_path])
    assert sorted(s["editor"] for s in found) == ["grace", "none"]
    assert all("run_dir" in s for s in found)


def test_figures_written_when_data_exists_and_skipped_otherwise(tmp_path):
    recs = [
        CaseRecord(case_id=str(i), info={"distances": {"rephrase": i, "neighbours": [i + 1, i + 3], "radius": 2.0},
                                         "keys": {"prompt": [i, 0, 1], "rephrase": [i, 1, 0], "neighbours": [[0, i, 2]]}})
        for i in range(4)
    ]  # fmt: skip
    assert distance_envelope(recs, tmp_path / "d.png").stat().st_size > 0
    assert key_pca([("GRACE", recs)], tmp_path / "k.png").stat().st_size > 0
    assert distance_envelope([CaseRecord(case_id="x")], tmp_path / "none.png") is None
    assert key_pca([("GRACE", [])], tmp_path / "none2.png") is None
    with_cost = [{**_summary(e, 0, 1), "cost": {"mean_seconds": 1.0, "mean_peak_bytes": 2**20}} for e in ("none", "grace")]
    assert [p.name for p in cost_bars(with_cost, tmp_path)] == ["fig3_time.png", "fig4_memory.png"]
    assert cost_bars([_summary("none", 0, 1)], tmp_path / "no-means") == []  # no mean cost recorded
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cases.jsonl").write_text("".join(r.model_dump_json(exclude_none=True) + "\n" for r in recs))
    written = all_figures([{**with_cost[1], "run_dir": str(run_dir)}], tmp_path / "figs")
    assert {p.name for p in written} == {"fig3_time.png", "fig4_memory.png", "distances_cnle_grace.png", "fig6_keys_cnle.png"}
    assert all(p.parent == tmp_path / "figs" for p in written)  # every figure inside the output folder
