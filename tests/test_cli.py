"""The CLI: bad input gives a one-line error and a non-zero exit; run/report/apply work end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from clmedit.cli import app
from clmedit.data.schema import read_cases, write_cases
from clmedit.data.unprobed import write_unprobed
from clmedit.editors.base import EDITORS, Editor, EditResult, EditState, replace_module
from clmedit.errors import NotSavableError
from clmedit.fixes.artifact import load_artifact, save_artifact
from clmedit.fixes.cases import read_fixes
from clmedit.models.fingerprint import fingerprint
from clmedit.models.tiny import tiny_model
from clmedit.results import read_records
from clmedit.run.folds import split_folds
from tests.conftest import make_case

cli = CliRunner()


class Scaled(nn.Module):
    """A wrapper holding its own state (like GRACE's codebook layer): output = layer(x) * scale."""

    def __init__(self, layer: nn.Module, scale: float):
        super().__init__()
        self.layer = layer
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return self.layer(x) * self.scale


class WrapEdit(Editor):
    """A module-wrapping test editor (scale from the cases) with its edit as data: the scale."""

    name = "wrap"
    PATH = "model.layers.1.mlp.down_proj"

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        self._wrap(model, 1.0 + 0.1 * len(cases), result)

    def _wrap(self, model, scale: float, result: EditResult) -> None:
        wrapper = Scaled(model.get_submodule(self.PATH), scale)
        result.undo.append(replace_module(model, self.PATH, wrapper))

    def edit_state(self, model) -> EditState:
        return EditState({"scale": model.get_submodule(self.PATH).scale.detach().clone()})

    def _load_edit(self, model, tok, state: EditState, result: EditResult) -> None:
        self._wrap(model, float(state.tensors["scale"]), result)


class WrapWithoutState(WrapEdit):
    """Wraps a module but keeps the weight editors' edit_state: its edit cannot be saved whole."""

    name = "wrap-no-state"
    edit_state = Editor.edit_state


@pytest.fixture
def data(tmp_path):
    return write_cases(tmp_path / "cases.jsonl", [make_case(i) for i in range(2)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--data", "missing.jsonl", "--out", "o"], "does not exist"),
        (["run", "--data", "default:java", "--out", "o"], "default:cnle"),
        (["run", "--data", "x", "--out", "o", "--shard", "4/2"], "i/n"),
        (["run", "--data", "x", "--out", "o", "--hp", "novalue"], "key=value"),
        (["bench", "--editors", "nope"], "unknown editor"),
        (["report", "nowhere"], "no summary.json"),
        (["apply"], "--load DIR --fixes FILE --out NEW_DIR"),
        (["apply", "--fixes", "f.jsonl"], "needs --out"),
    ],
)
def test_bad_input_gives_clear_error_and_nonzero_exit(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_unknown_editor_fails_before_loading_a_model(data, tmp_path):
    result = cli.invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "o"), "--editor", "nope"])
    assert result.exit_code == 2 and "unknown editor 'nope'" in result.output


def test_run_then_report(tiny_dir, data, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_dir), "--data", str(data), "--out", str(out), "--no-fluency"]
    threads = torch.get_num_threads()
    try:
        result = cli.invoke(app, [*args, "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "| Unedited |" in result.output
    assert len((out / "cases.jsonl").read_text().splitlines()) == 2
    result = cli.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "table.tex").is_file() and (tmp_path / "rep" / "fig3_time.png").is_file()


def test_artifact_round_trip_for_wrapping_editor(tmp_path, monkeypatch):
    monkeypatch.setitem(EDITORS, "wrap", f"{__name__}:WrapEdit")
    fixes_file = tmp_path / "fixes.jsonl"
    fixes_file.write_text(
        '{"intent": "add two numbers", "target": "a + b"}\n{"code": "f(x)", "target": "Call f."}\n'
    )
    fixes = read_fixes(fixes_file)
    assert [f.task for f in fixes] == ["cnle", "csne"] and fixes[0].prompt == "Intent: add two numbers\nCode:"
    edited, tok = tiny_model("llama")
    save_artifact(edited, tok, WrapEdit(), fixes, tmp_path / "art", "tiny")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert list(manifest["edit"]["tensors"]) == ["scale"]
    fresh, _ = tiny_model("llama")
    load_artifact(fresh, tok, tmp_path / "art")
    assert fingerprint(fresh) == fingerprint(edited)
    assert fresh.get_submodule("model.layers.1.mlp.down_proj").scale.item() == pytest.approx(1.2)
    other, _ = tiny_model("llama")
    with pytest.raises(NotSavableError, match="implement edit_state"):
        save_artifact(other, tok, WrapWithoutState(), fixes, tmp_path / "bad", "tiny")
    assert type(other.get_submodule(WrapEdit.PATH)).__name__ == "Linear"  # the refused edit is undone


def test_apply_command_saves_and_loads(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(EDITORS, "wrap", f"{__name__}:WrapEdit")
    (tmp_path / "f.jsonl").write_text('{"prompt": "sort a list", "target": "sorted(xs)"}\n')
    art = tmp_path / "art"
    base = ["apply", "--model", str(tiny_dir), "--editor", "wrap"]
    result = cli.invoke(app, [*base, "--fixes", str(tmp_path / "f.jsonl"), "--out", str(art)])
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["apply", "--model", str(tiny_dir), "--load", str(art), "-p", "sort a list"])
    assert result.exit_code == 0, result.output
    assert "loaded wrap edit of 1 fix(es)" in result.output and "Intent: sort a list\nCode:" in result.output


def test_bench_editor_names():
    from clmedit.grid.bench import bench_editor_names

    assert bench_editor_names("none, grace") == ["none", "grace"]
    every = bench_editor_names("all")
    assert "none" in every and "grace" in every and "malmen" not in every  # trainable editors need folds


class Broken(Editor):
    """An editor whose every edit fails (and changes nothing)."""

    name = "broken"

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        raise ValueError("no edit today")


@pytest.fixture
def files(tmp_path, tiny_dir, data):
    """Bad inputs of every kind, in one folder."""
    import gzip

    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.yaml").write_text("lr: [1,\n")
    raw = gzip.compress(data.read_bytes())
    (tmp_path / "cut.jsonl.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "summary.json").write_text("{not json")
    (tmp_path / "null.jsonl").write_text('{"prompt": "x", "target": null}\n')
    return tmp_path


NO_MODEL = "no/such-model"  # checks that must come before loading a model use this one
USER_ERRORS = [
    (["run", "--data", "{data}", "--model", NO_MODEL, "--out", "afile"], "is a file, not a folder"),
    (["run", "--data", "{data}", "--model", NO_MODEL, "--out", "afile/sub"], "cannot write the run folder"),
    (
        ["run", "--data", "{data}", "--model", NO_MODEL, "--out", "o", "--device", "cuda:99"],
        "--device cuda:99",
    ),
    (["run", "--data", "{data}", "--model", NO_MODEL, "--out", "o", "--device", "gpu"], "not a torch device"),
    (["run", "--data", "{data}", "--model", NO_MODEL, "--out", "o", "--hp", "lr=[1,"], "--hp 'lr=[1,'"),
    (
        ["run", "--data", "{data}", "--model", NO_MODEL, "--out", "o", "-e", "ft", "--hp", "nope=1"],
        "unknown hparams key(s) 'nope'",
    ),
    (
        ["run", "--data", "{data}", "--model", NO_MODEL, "--out", "o", "-e", "ft", "--preset", "bad.yaml"],
        "YAML",
    ),
    (["run", "--data", "cut.jsonl.gz", "--model", NO_MODEL, "--out", "o"], "truncated or corrupt gzip"),
    (["run", "--data", "{data}", "--model", NO_MODEL, "--out", "o", "-e", "malmen"], "--folds 2"),
    (["stats", "--model", NO_MODEL, "--samples", "0"], "--samples"),
    (["stats", "--model", NO_MODEL, "--layers", "a-b"], "--layers 'a-b'"),
    (["stats", "--model", NO_MODEL, "--corpus", "missing.txt"], "corpus missing.txt does not exist"),
    (["stats", "--model", NO_MODEL, "--device", "cuda:99"], "--device cuda:99"),
    (["stats", "--model", "{tiny}", "--layers", "99"], "has layers 0..3"),
    (["report", "rep"], "is malformed"),
    (["apply", "--model", NO_MODEL, "--load", "x", "-p", "a", "--task", "java"], "--task 'java'"),
    (["apply", "--model", NO_MODEL, "--load", "nowhere", "-p", "a"], "not a clmedit fix file"),
    (["apply", "--model", NO_MODEL, "-e", "agrace", "--fixes", "{data}", "--out", "f"], "--trained DIR"),
    (
        ["apply", "--model", NO_MODEL, "-e", "grace", "--fixes", "{data}", "--out", "f", "--trained", "t"],
        "grace has no trained part",
    ),
    (["export", "--model", NO_MODEL, "--load", "nowhere", "--out", "e"], "not a clmedit fix file"),
    (["apply", "--model", NO_MODEL, "--fixes", "null.jsonl", "--out", "art"], "non-empty string 'target'"),
    (["train", "--model", NO_MODEL, "-e", "grace", "--data", "{data}", "--out", "t"], "nothing to train"),
    (
        ["train", "--model", NO_MODEL, "-e", "malmen", "--data", "{data}", "--out", "t", "--fold", "2"],
        "--fold 2",
    ),
    (["bench", "--model", NO_MODEL, "--tasks", "java"], "--tasks 'java'"),
    (["bench", "--model", NO_MODEL, "--out", "afile"], "is a file"),
    (["data", "show", "cut.jsonl.gz"], "truncated or corrupt gzip"),
]


@pytest.mark.parametrize(
    "args, message", USER_ERRORS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(USER_ERRORS)]
)
def test_every_user_error_is_one_message_with_exit_2(args, message, files, data, tiny_dir, monkeypatch):
    monkeypatch.chdir(files)
    result = cli.invoke(app, [a.format(data=data, tiny=tiny_dir) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "no model" not in result.output  # found before any model was loaded


def _run_args(tiny_dir, data, out) -> list[str]:
    """`clmedit run` on the tiny model and case file, without fluency, into `out`."""
    return ["run", "--model", str(tiny_dir), "--data", str(data), "--out", str(out), "--no-fluency"]


def test_failed_cases_exit_nonzero_and_say_why(tiny_dir, data, tmp_path, monkeypatch):
    monkeypatch.setitem(EDITORS, "broken", f"{__name__}:Broken")
    args = _run_args(tiny_dir, data, tmp_path / "o")
    result = cli.invoke(app, [*args, "--editor", "broken"])
    assert result.exit_code == 1
    assert "2 of 2 case(s) failed (ValueError: 2)" in result.output


def test_rerun_into_a_folder_of_another_configuration(tiny_dir, data, tmp_path):
    args = _run_args(tiny_dir, data, tmp_path / "o")
    assert cli.invoke(app, args).exit_code == 0
    result = cli.invoke(app, [*args, "--editor", "grace"])
    assert (
        result.exit_code == 2
        and "editor: 'none' -> 'grace'" in result.output
        and "--overwrite" in result.output
    )
    result = cli.invoke(app, [*args, "--editor", "grace", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "| GRACE |" in result.output


def test_skipped_lines_are_shown_at_the_end(tiny_dir, data, tmp_path):
    with open(data, "a") as fh:
        fh.write("{torn\n")
    args = _run_args(tiny_dir, data, tmp_path / "o")
    result = cli.invoke(app, args)
    assert (
        result.exit_code == 0
        and "1 line(s) of" in result.output
        and "malformed json line: 1" in result.output
    )


def test_train_then_run_uses_the_trained_fold(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(EDITORS, "memo", "tests.test_runner:Memo")
    data = write_cases(tmp_path / "c.jsonl", [make_case(i) for i in range(4)])
    fold0 = split_folds(read_cases(data), 2, 0)[0]
    write_unprobed(data, [make_case(9).prompt, fold0[0].prompt])  # the second is a probe of fold 0
    common = ["--model", str(tiny_dir), "--data", str(data), "--editor", "memo"]
    threads = torch.get_num_threads()
    try:
        result = cli.invoke(app, ["train", *common, "--fold", "0", "--out", str(tmp_path / "r" / "fold0"),
                                  "--threads", "1"])  # fmt: skip
        assert torch.get_num_threads() == 1  # a training job that shares the machine can be held to one core
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    trained = json.loads((tmp_path / "r" / "fold0" / "train.json").read_text())
    assert trained["train_cases"] == 2
    assert trained["unprobed_offered"] == 1  # the line that is a probe of the test fold is not offered
    (tmp_path / "r" / "fold0" / "learned.json").write_text("99")  # proof that fold 0 is loaded, not refitted
    result = cli.invoke(app, ["run", *common, "--folds", "2", "--out", str(tmp_path / "r"), "--no-fluency"])
    assert result.exit_code == 0, result.output
    learned = {r.fold: r.info["learned"] for r in read_records(tmp_path / "r")}
    assert learned == {0: 99, 1: 2}
