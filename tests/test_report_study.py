"""The study's tables, figures and page from a synthetic study folder; numbers checked by hand."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from clmedit.cli import app
from clmedit.report import study_tables as st
from clmedit.report.study import study_runs, write_study_report
from tests.report_fixtures import make_study


def _row(table: str, start: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(start))


def test_tables_from_synthetic_records(tmp_path):
    root = make_study(tmp_path / "study")
    write_study_report(root)
    t4 = (root / "table4.md").read_text()
    # GRACE on CNLE: eff EM mean(1, 0) = 50, gen 0, spec mean(1, 0) = 50; fluency 2.0 bits x100
    assert _row(t4, "| CNLE | GRACE |") == (
        "| CNLE | GRACE | 50.00 | 50.00 | 50.00 | 0.00 | 0.00 | 0.00 | 50.00 | 50.00 | 50.00 | 200.00 |"
    )
    assert _row(t4, "| CNLE | A-GRACE |").startswith("| CNLE | A-GRACE | 100.00 | 100.00 | 100.00 | 50.00 |")
    assert t4.count("| CNLE |") == 3 and t4.count("| CSNE |") == 3  # one row per editor and task
    t5 = (root / "table5.md").read_text()
    # effectiveness EM CSNE 100, CNLE 50: a drop of 50
    assert (
        _row(t5, "| GRACE |")
        == "| GRACE | " + " | ".join(["100.00"] * 3 + ["50.00"] * 3 + ["50.00"] * 3) + " |"
    )
    assert _row(t5, "| A-GRACE |").endswith("| 0.00 | 0.00 | 0.00 |")
    t6 = (root / "table6.md").read_text()
    assert "Unedited" not in t6 and t6.count("| GRACE |") == 2 and t6.count("| A-GRACE |") == 2
    t3 = (root / "table3.md").read_text()
    assert "| Specificity target | 4.00 / 4.0 | 4.00 / 4.0 |" in t3 and "| Cases | 2 | 2 |" in t3
    cost = (root / "cost.md").read_text()
    assert "| CNLE | GRACE | 1.50 | 2.0 | 10.0 |" in cost  # seconds mean(1, 2); own 2 MiB; resident 10 MiB
    assert r"\begin{tabular}" in (root / "table5.tex").read_text()


def test_figures_of_the_study(tmp_path):
    root = make_study(tmp_path / "study")
    write_study_report(root)
    names = {p.name for p in (root / "figures").iterdir()}
    assert {"fig3_time.png", "fig4_memory.png", "fig6_keys_cnle.png", "fig6_keys_csne.png"} <= names
    assert {"distances_cnle_grace.png", "distances_csne_agrace.png"} <= names
    html = (root / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names)
    assert "<link" not in html and 'src="http' not in html  # self-contained: nothing fetched


def test_published_rows_show_only_when_filled(tmp_path):
    root = make_study(tmp_path / "study")
    summaries = study_runs(root, json.loads((root / "study.json").read_text()))
    assert st.published_rows() == []  # the shipped file holds no numbers yet
    assert "not filled in" in st.table4(summaries, []).note
    pub = tmp_path / "published.json"
    triple = {"em": 99.0, "bleu": 98.0, "rouge_l": 97.0}
    metrics = {"effectiveness": triple, "generalization": triple, "specificity": triple, "fluency": 600.0}
    rows = [{"model": "CodeLlama-7b-hf", "task": "cnle", "editor": "grace", "metrics": metrics},
            {"model": "CodeLlama-7b-hf", "task": "cnle", "editor": "malmen", "metrics": None}]  # fmt: skip
    pub.write_text(json.dumps({"rows": rows}))
    published = st.published_rows({("cnle", "grace")}, path=pub)
    t = st.markdown(st.table4(summaries, published))
    assert "| CNLE | GRACE [published, CodeLlama-7b-hf] | 99.00 | 98.00 | 97.00 |" in t
    assert "MALMEN" not in t and "figures for other models" in t


def test_report_never_writes_outside_out(tmp_path):
    """A hostile summary.json (paths in tasks, editor, model, run_dir) cannot place files elsewhere."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    make_study(tmp_path / "s")
    (run / "cases.jsonl").write_text((tmp_path / "s" / "cnle" / "grace" / "cases.jsonl").read_text())
    summary = json.loads((tmp_path / "s" / "cnle" / "grace" / "summary.json").read_text())
    summary.update(tasks=["../../../escaped"], editor="../../escaped2", model="/abs/escaped3",
                   run_dir=str(tmp_path / "elsewhere"), label="x")  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert after == before  # nothing new outside --out
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name.startswith("distances_") for p in written) and all(".." not in p.name for p in written)


def test_report_reads_results_only_without_torch_or_the_runner():
    import subprocess
    import sys

    code = ("import sys, clmedit.report.study, clmedit.report.figures, clmedit.report.html, clmedit.results; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('clmedit.run')]; print(bad); "
            "sys.exit(1 if bad else 0)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_report_command_rewrites_a_study_report(tmp_path):
    root = make_study(tmp_path / "study")
    result = CliRunner().invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "table6.md").is_file()
    assert not (root / "report.html").exists()  # written where --out says, nowhere else
