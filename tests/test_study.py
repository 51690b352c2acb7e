"""`clmedit study --quick` end to end on a tiny model: every editor on both tasks, then the report."""

from __future__ import annotations

import json

import pytest

from clmedit.data.schema import write_cases
from clmedit.errors import InputError
from clmedit.grid.study import STUDY_EDITORS, study
from clmedit.models.tiny import tiny_model
from tests.conftest import make_case


def test_quick_study_runs_every_editor_and_writes_the_report(tmp_path):
    lm, tok = tiny_model("llama")
    data = {}
    for task in ("cnle", "csne"):
        path = tmp_path / f"{task}.jsonl"
        write_cases(path, [make_case(i, task=task, target=f"x{i} + {task}") for i in range(8)])
        data[task] = str(path)
    out = tmp_path / "study"
    (out / "csne").mkdir(parents=True)
    (out / "csne" / "ft").write_text("in the way")  # this run cannot write its folder: it fails alone
    with pytest.raises(RuntimeError, match=f"1 of {2 * len(STUDY_EDITORS)} runs failed"):
        study("tiny", ("cnle", "csne"), "quick", out=out, data=data, lm=lm, tok=tok, fluency=False)
    assert (out / "csne" / "agrace" / "summary.json").is_file()  # the grid went on after the failure
    assert "FAILED runs" in (out / "report.html").read_text()
    (out / "csne" / "ft").unlink()
    page = study("tiny", ("cnle", "csne"), "quick", out=out, data=data, lm=lm, tok=tok, fluency=False)
    manifest = json.loads((out / "study.json").read_text())
    assert manifest["size"] == "quick" and "QUICK" in manifest["size_note"]
    for task in ("cnle", "csne"):
        for editor in STUDY_EDITORS:
            summary = json.loads((out / task / editor / "summary.json").read_text())
            assert summary["counts"]["ok"] >= 2, (task, editor, summary["failures"])
        assert (out / task / "malmen" / "fold0" / "DONE").is_file()  # trained once, reused on resume
    table4 = (out / "table4.md").read_text()
    ours = [line for line in table4.splitlines() if line.startswith("| C") and "published" not in line]
    assert len(ours) == 2 * len(STUDY_EDITORS) and "| CNLE | SCOPE (ours) |" in table4
    assert "(published, CodeLlama-7B)" in table4 and "CNLE: 4 of 4 cases (ROME / MEMIT / PMET: 2 of 2)" in table4
    # (the tiny tokenizer spells "x0" in one token alone, in two after the prompt: every case is budget-short)
    table3 = (out / "table3.md").read_text()
    assert "Specificity target" in table3 and "the tokenizer of tiny-llama" in table3  # not the regex proxy
    for name in ("findings.md", "findings.tex", "tables.md"):
        assert "F6" in (out / name).read_text() and "CodeLlama-7B" in (out / name).read_text()
    assert {p.name for p in (out / "figures").iterdir()} >= {
        "fig3_time.png",
        "fig4_memory.png",
        "fig6_keys_cnle.png",
    }
    html = page.read_text()
    assert 'id="findings"' in html and "(published, CodeQwen1.5-7B)" in html
    assert (
        "FAILED" not in html
        and "QUICK" in html
        and "data:image/png;base64," in html
        and "http" not in html.split("<script")[0]
    )
    # a rerun resumes: nothing is edited again
    before = (out / "cnle" / "grace" / "cases.jsonl").read_text()
    study("tiny", ("cnle", "csne"), "quick", out=out, data=data, lm=lm, tok=tok, fluency=False)
    assert (out / "cnle" / "grace" / "cases.jsonl").read_text() == before


def test_study_budget_is_checked_before_any_work(tmp_path):
    with pytest.raises(InputError, match="--budget"):
        study("tiny", ("cnle",), "quick", out=tmp_path / "s", budget="whole")
