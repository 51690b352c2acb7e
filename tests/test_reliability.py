"""A user's mistakes and hostile inputs: nothing given is destroyed, every mistake is one line with exit 2
(before any model loads where it can be found earlier), and report text stays text in every format."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from clmedit.cli import app
from clmedit.data.schema import write_cases
from clmedit.results import CaseRecord
from clmedit.run.summary import row_facts, summarise_records
from tests.conftest import make_case

cli = CliRunner()
NO_MODEL = "no/such-model"  # a check that must come before loading a model uses this one


@pytest.fixture
def data(tmp_path):
    return write_cases(tmp_path / "c.jsonl", [make_case(i) for i in range(2)])


def _one_line_error(result, *parts: str) -> None:
    """Exit 2, one `error:` line naming `parts`, no traceback, no boxed panel, no model loaded."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(p in lines[0] for p in parts), result.output
    assert "no model" not in result.output


def _run(*args: str, model: str = NO_MODEL) -> list[str]:
    return ["run", "--model", model, "--no-fluency", "--threads", "1", *args]


# --- never destroy an input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cases.jsonl", "cases_test.jsonl"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_run_never_writes_over_or_deletes_its_input(data, tmp_path, name, overwrite):
    folder = tmp_path / "D"
    folder.mkdir()
    given = folder / name
    given.write_bytes(data.read_bytes())
    result = cli.invoke(app, _run("--data", str(given), "--out", str(folder), *overwrite))
    assert result.exit_code == 2 and "error:" in result.output
    assert given.read_bytes() == data.read_bytes() and sorted(os.listdir(folder)) == [name]


@pytest.mark.parametrize("out", ["/", "", "  "])
def test_root_and_empty_outputs_are_refused(data, out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --out used to mean the current folder
    _one_line_error(cli.invoke(app, _run("--data", str(data), "--out", out)), "--out")


def test_a_folder_clmedit_did_not_make_is_refused(data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    _one_line_error(cli.invoke(app, _run("--data", str(data), "--out", str(tmp_path / "mine"))), "did not make")


def test_overwrite_removes_only_what_runs_wrote(tiny_dir, data, tmp_path):
    out = tmp_path / "r"
    assert cli.invoke(app, _run("--data", str(data), "--out", str(out), model=str(tiny_dir))).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "cases_backup.jsonl").write_text('{"case_id": "case-0", "error": null}\n')  # not a name runs write
    result = cli.invoke(app, _run("--data", str(data), "--out", str(out), "-e", "grace", "--overwrite",
                                  model=str(tiny_dir)))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "cases_backup.jsonl").is_file()
    assert {json.loads(line)["editor"] for line in (out / "cases.jsonl").read_text().splitlines()} == {"grace"}


def test_apply_never_rewrites_its_fixes_file(data, tmp_path):
    folder = tmp_path / "F"
    folder.mkdir()
    fixes = folder / "fixes.jsonl"
    fixes.write_text('{"prompt": "sort a list", "target": "sorted(xs)", "note": "mine"}\n')
    before = fixes.read_bytes()
    result = cli.invoke(app, ["apply", "--model", NO_MODEL, "--fixes", str(fixes), "--out", str(folder)])
    _one_line_error(result, "holds the input fixes.jsonl")
    assert fixes.read_bytes() == before


def test_data_commands_never_replace_a_file_they_did_not_write(tmp_path):
    released = tmp_path / "clme.json"
    released.write_text("[]")
    _one_line_error(cli.invoke(app, ["data", "import-clmeeval", str(released), "--out", str(released)]), "input file")
    assert released.read_text() == "[]"
    theirs = tmp_path / "notes.jsonl"
    theirs.write_text("x")
    result = cli.invoke(app, ["data", "build", "-t", "cnle", "--embedder", "bm25", "--out", str(theirs)])
    _one_line_error(result, "already exists")
    assert theirs.read_text() == "x"
    beside = tmp_path / "new.unprobed.jsonl"  # the file a build of new.jsonl writes beside it
    beside.write_text("y")
    result = cli.invoke(app, ["data", "build", "-t", "cnle", "--embedder", "bm25", "--out", str(tmp_path / "new.jsonl")])
    _one_line_error(result, "already exists")
    assert beside.read_text() == "y" and not (tmp_path / "new.jsonl").exists()


def test_a_failed_export_leaves_no_folder(tmp_path):
    fix = tmp_path / "fix"
    fix.mkdir()
    manifest = {"format": 3, "model": str(tmp_path / "gone"), "base_fingerprint": "x", "editor": "grace", "hparams": {},
                "fixes": 1, "edit": {"meta": {}, "tensors": {}}}  # fmt: skip
    (fix / "manifest.json").write_text(json.dumps(manifest))
    result = cli.invoke(app, ["export", "--load", str(fix), "--out", str(tmp_path / "e" / "x")])
    assert result.exit_code == 2 and "no model" in result.output  # it failed loading the model
    assert not (tmp_path / "e" / "x").exists()


# --- a user's mistake is one line, exit 2, before the model loads -----------------------------------


@pytest.mark.parametrize(
    "args, parts",
    [
        (["--seed", "-1"], ["--seed"]),
        (["--seed", "100000000000000000000000"], ["--seed", "4294967295"]),
        (["--threads", "100000"], ["--threads 100000", "CPU"]),
        (["--threads", "0"], ["--threads"]),
        (["--limit", "0"], ["--limit"]),
        (["--checkpoints", "1,5"], ["--checkpoints", "--sequential"]),
        (["--eval-limit", "2"], ["--eval-limit", "--folds"]),
        (["--nope"], ["--nope"]),
    ],
)
def test_option_mistakes_are_one_line(data, tmp_path, args, parts):
    _one_line_error(cli.invoke(app, _run("--data", str(data), "--out", str(tmp_path / "o"), *args)), *parts)


def test_data_that_is_not_a_regular_file_is_named(tmp_path):
    _one_line_error(cli.invoke(app, _run("--data", str(tmp_path), "--out", str(tmp_path / "o"))), "is a folder")
    result = cli.invoke(app, _run("--data", "/dev/null", "--out", str(tmp_path / "o")))
    _one_line_error(result, "not a regular file")


def test_a_missing_embedder_is_named_before_any_work(tmp_path):
    result = cli.invoke(app, ["data", "build", "-t", "cnle", "--embedder", "/nonexist", "--out", str(tmp_path / "x.jsonl")])
    _one_line_error(result, "--embedder '/nonexist'")


def test_study_into_a_file_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = cli.invoke(app, ["study", "--model", NO_MODEL, "--out", str(tmp_path / "afile"), "--threads", "1"])
    _one_line_error(result, "is a file")


def test_an_empty_neighbour_prompt_skips_its_line_and_says_which(tiny_dir, tmp_path):
    bad = make_case(1).model_dump()
    bad["neighbours"][0]["prompt"] = ""
    data = tmp_path / "c.jsonl"
    data.write_text(make_case(0).model_dump_json() + "\n" + json.dumps(bad) + "\n")
    result = cli.invoke(app, _run("--data", str(data), "--out", str(tmp_path / "o"), model=str(tiny_dir)))
    assert result.exit_code == 0, result.output
    assert "1 line(s) of" in result.output and "invalid case (neighbours.0.prompt)" in result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["counts"]["cases"] == 1 and summary["skipped_lines"]["lines"][0]["line"] == 2


# --- results-file text stays text in Markdown, LaTeX and figures --------------------------------------


def _one_case_summary() -> dict:
    """The summary of one GRACE case that scored 1 everywhere."""
    triple = {"em": 1.0, "bleu": 1.0, "rouge_l": 1.0}
    scores = {"case_id": "a", "effectiveness": triple, "generalization": triple, "specificity": triple}
    recs = [{"case_id": "a", "task": "cnle", "editor": "grace", "model": "m", "error": None, "seconds": 1.0,
             "peak_bytes": 1, "scores": scores}]  # fmt: skip
    return {**summarise_records([CaseRecord.model_validate(r) for r in recs]), **row_facts("grace")}


def test_hostile_labels_and_model_names_stay_text_in_every_report_format(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    summary = {**_one_case_summary(), "model": "evil\n# Heading | x\x1b[31m", "label": "$\\frac{$"}
    (out / "summary.json").write_text(json.dumps(summary))
    other = tmp_path / "s"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({**summary, "label": "\\input /etc/passwd ^~ %"}))
    result = cli.invoke(app, ["report", str(out), str(other), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "rep" / "table.md").read_text()
    assert not any(line.startswith("# ") for line in md.splitlines()) and "\x1b" not in md
    assert "evil # Heading \\| x" in md  # one heading line, the pipe escaped
    tex = (tmp_path / "rep" / "table.tex").read_text()
    assert "\\input" not in tex and "\\textbackslash{}input /etc/passwd \\textasciicircum{}\\textasciitilde{} \\%" in tex
    assert "\\$\\textbackslash{}frac\\{\\$" in tex
    assert (tmp_path / "rep" / "fig3_time.png").is_file()  # drawn: the label was not parsed as mathtext


# --- the next adversarial cases ---------------------------------------------------------------------------


def test_a_fifo_behind_a_link_or_as_a_preset_is_named_not_read(data, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "link.jsonl").symlink_to(fifo)
    result = cli.invoke(app, _run("--data", str(tmp_path / "link.jsonl"), "--out", str(tmp_path / "o")))
    _one_line_error(result, "not a regular file")
    (tmp_path / "preset.yaml").symlink_to(fifo)
    preset = str(tmp_path / "preset.yaml")
    result = cli.invoke(app, _run("--data", str(data), "--out", str(tmp_path / "o"), "-e", "ft", "--preset", preset))
    _one_line_error(result, "hparams file", "not a regular file")


def test_fix_file_and_export_outputs_are_guarded(data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "paper.md").write_text("x")
    result = cli.invoke(app, ["apply", "--model", NO_MODEL, "--fixes", str(data), "--out", str(tmp_path / "mine")])
    _one_line_error(result, "did not make")
    fix = tmp_path / "fix"
    fix.mkdir()
    (fix / "manifest.json").write_text("{}")
    _one_line_error(cli.invoke(app, ["export", "--load", str(fix), "--out", str(fix)]), "is an input")


def test_a_run_folder_of_an_older_clmedit_is_adopted(tiny_dir, data, tmp_path):
    out = tmp_path / "r"
    assert cli.invoke(app, _run("--data", str(data), "--out", str(out), model=str(tiny_dir))).exit_code == 0
    (out / "written.json").unlink()  # as an older clmedit left it: run.json and results
    (out / "notes.txt").write_text("mine")
    result = cli.invoke(app, _run("--data", str(data), "--out", str(out), "-e", "grace", "--overwrite",
                                  model=str(tiny_dir)))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").is_file() and "cases.jsonl" in json.loads((out / "written.json").read_text())["names"]


def test_a_tampered_manifest_is_named_before_the_model_loads(tmp_path):
    fix = tmp_path / "fix"
    fix.mkdir()
    manifest = {"format": 3, "model": "m", "base_fingerprint": "x", "editor": "grace", "hparams": None,
                "fixes": 1, "edit": {"meta": {}, "tensors": {}}}  # fmt: skip
    (fix / "manifest.json").write_text(json.dumps(manifest))
    result = cli.invoke(app, ["apply", "--model", NO_MODEL, "--load", str(fix), "-p", "sort a list"])
    _one_line_error(result, "'hparams' is null, not an object")


def test_report_and_bench_never_write_into_a_users_folder(tmp_path):
    """A folder holding anything but a report's tables and figures is refused whole, before any write;
    a report folder of our own is written again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(_one_case_summary()))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my notes")
    (mine / "thesis.tex").write_text("chapter")
    _one_line_error(cli.invoke(app, ["report", str(run), "--out", str(mine), "--no-figures"]), "--out")
    assert (mine / "table.md").read_text() == "my notes" and sorted(os.listdir(mine)) == ["table.md", "thesis.tex"]
    _one_line_error(cli.invoke(app, ["report", str(run), "--out", str(run)]), "--out")
    ours = tmp_path / "rep"
    for _ in range(2):  # a report folder is ours to rewrite
        assert cli.invoke(app, ["report", str(run), "--out", str(ours), "--no-figures"]).exit_code == 0
    _one_line_error(cli.invoke(app, ["bench", "--model", NO_MODEL, "--out", str(mine)]), "--out")
    assert sorted(os.listdir(mine)) == ["table.md", "thesis.tex"]


def test_train_never_writes_into_a_users_folder(data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "encoder.safetensors").write_bytes(b"my weights")
    result = cli.invoke(app, ["train", "--model", NO_MODEL, "-e", "agrace", "--data", str(data), "--out", str(mine)])
    _one_line_error(result, "--out")
    assert (mine / "encoder.safetensors").read_bytes() == b"my weights" and len(list(mine.iterdir())) == 1
