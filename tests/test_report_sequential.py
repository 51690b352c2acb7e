"""The sequential report: the checkpoint table and curves from hand-made records; the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clmedit.cli import app
from clmedit.data.schema import write_cases
from clmedit.models.tiny import tiny_model
from clmedit.report.sequential import cost_series, render_checkpoints, rolling_median, sequential_figures
from clmedit.run.summary import row_facts
from tests.conftest import make_case

MIB = 2**20


def _row(edits, applied, eff, gen, spec, cases, excluded, secs, rss, complete=True) -> dict:
    metrics = {
        "effectiveness": {"em": eff},
        "generalization": {"em": gen},
        "specificity": None,
        "fluency": None,
    }
    if spec is not None:
        metrics["specificity"] = {"em": spec}
    return {"edits": edits, "requested": [edits], "applied": applied, "complete": complete, "metrics": metrics,
            "specificity_cases": cases, "neighbours_excluded": excluded, "seconds_per_edit": secs,
            "rss_bytes": rss}  # fmt: skip


@pytest.fixture
def runs(tmp_path):
    """FT-L: checkpoints after 1 and 3 edits (and a failed 4th); GRACE in batches of 2, interrupted."""
    ft = tmp_path / "ft"
    ft.mkdir()
    edits = [
        {
            "apply": 0,
            "case_ids": ["a"],
            "edits": 1,
            "seconds": 0.5,
            "rss_before_bytes": 99 * MIB,
            "rss_bytes": 100 * MIB,
            "error": None,
        },
        {
            "apply": 1,
            "case_ids": ["b", "c"],
            "edits": 3,
            "seconds": 0.5,
            "rss_bytes": 101 * MIB,
            "error": None,
        },
        {"apply": 2, "case_ids": ["d"], "edits": 4, "rss_bytes": 101 * MIB, "error": {"type": "ValueError"}},
    ]
    (ft / "edits.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edits))
    first = {
        "mode": "sequential", "editor": "ft", **row_facts("ft"), "model": "m", "tasks": ["cnle"], "run_dir": str(ft),
        "sequential": {"batch_size": 1, "checkpoints": [
            _row(1, 1, 100.0, 0.0, 100.0, 1, 0, 0.5, 100 * MIB),
            _row(3, 3, 200 / 3, 100 / 3, None, 0, 5, 0.25, 101 * MIB),  # every neighbour was an edited input
        ]},
    }  # fmt: skip
    second = {
        "mode": "sequential", "editor": "grace", **row_facts("grace"), "model": "m", "tasks": ["cnle"],
        "run_dir": str(tmp_path / "g"),
        "sequential": {"batch_size": 2, "checkpoints": [
            {"edits": 2, "requested": [1], "applied": 2, "complete": False, "metrics": {}},
        ]},
    }  # fmt: skip
    return [second, first]


EXPECTED = """\
### Sequential editing: m — CNLE

| Editor | Edits | In model | Retention EM | Gen. EM | Spec. EM | Fluency | Spec. cases | Excluded neighbours | s / edit | RSS (MiB) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| FT-L | 1 | 1 | 100.00 | 0.00 | 100.00 | - | 1 | 0 | 0.500 | 100 |
| FT-L | 3 | 3 | 66.67 | 33.33 | - | - | 0 | 5 | 0.250 | 101 |
| GRACE (batch 2) | 2 (incomplete) | 2 | - | - | - | - | - | - | - | - |"""


def test_checkpoint_table_matches_hand_written(runs):
    assert render_checkpoints(runs) == EXPECTED
    assert render_checkpoints([{"editor": "ft"}]) == "No sequential runs."  # single-edit runs are not rows


def test_cost_curves_come_from_the_apply_records(runs, tmp_path):
    series = cost_series(tmp_path / "ft")  # a failed call has no seconds; a batch of 2 halves them
    assert series == {
        "edits": [1, 3],
        "seconds_per_edit": [0.5, 0.25],
        "rss_edits": [0, 1, 3, 4],  # from the RSS before the first edit on
        "rss_mib": [99.0, 100.0, 101.0, 101.0],
        "device_mib": [],
    }
    np.testing.assert_allclose(rolling_median([1, 5, 3, 2], 2), [1, 3, 4, 2.5])


def test_figures_are_drawn_inside_out(runs, tmp_path):
    written = sequential_figures(runs, tmp_path / "rep")
    assert [p.name for p in written] == ["sequential_quality.png", "sequential_cost.png"]
    assert all(p.is_file() and p.stat().st_size > 1000 and p.parent == tmp_path / "rep" for p in written)
    assert sequential_figures([{"editor": "ft"}], tmp_path / "none") == []


def test_report_module_stays_free_of_torch_and_the_runner():
    import subprocess
    import sys

    code = ("import sys, clmedit.report.sequential; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('clmedit.run')]; print(bad); "
            "sys.exit(1 if bad else 0)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cli_sequential_run_then_report(tmp_path):
    folder = tmp_path / "tiny"
    model, tok = tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = write_cases(tmp_path / "cases.jsonl", [make_case(i) for i in range(3)])
    out, cli = tmp_path / "run", CliRunner()
    args = [
        "run",
        "--model",
        str(folder),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-fluency",
        "--editor",
        "none",
    ]
    result = cli.invoke(app, [*args, "--sequential", "5"])
    assert result.exit_code == 2 and "only 3 cases" in result.output
    threads = torch.get_num_threads()
    try:
        result = cli.invoke(app, [*args, "--sequential", "3", "--checkpoints", "1,2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "| Unedited | 3 | 3 |" in result.output
    assert sorted(p.name for p in (out / "checkpoints").glob("*.jsonl")) == [
        "edits-000001.jsonl", "edits-000002.jsonl", "edits-000003.jsonl"]  # fmt: skip
    result = cli.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    rep = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"sequential.md", "sequential_quality.png", "sequential_cost.png"} <= rep
    assert "table.md" not in rep  # no single-edit runs to tabulate
