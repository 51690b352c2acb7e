"""The CLI: bad input gives a one-line error and a non-zero exit; run/report/apply work end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from clmedit.cli import app
from clmedit.data.schema import write_cases
from clmedit.editors.base import EDITORS, Editor, EditResult, replace_module
from clmedit.models.arch import arch_of
from clmedit.models.tiny import tiny_model
from clmedit.run.artifact import load_artifact, read_fixes, save_artifact
from clmedit.run.records import fingerprint
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
    """A module-wrapping test editor; the scale depends on the cases, so a replay must get it right."""

    name = "wrap"

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        path = arch_of(model).path("down_proj", 1)
        wrapper = Scaled(model.get_submodule(path), 1.0 + 0.1 * len(cases))
        result.undo.append(replace_module(model, path, wrapper))


@pytest.fixture
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model, tok = tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


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
        (["apply"], "either --fixes"),
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
    assert list(manifest["wrapped_modules"]) == ["model.layers.1.mlp.down_proj"]
    fresh, _ = tiny_model("llama")
    load_artifact(fresh, tok, tmp_path / "art")
    assert fingerprint(fresh) == fingerprint(edited)
    assert fresh.get_submodule("model.layers.1.mlp.down_proj").scale.item() == pytest.approx(1.2)


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
    from clmedit.run.bench import bench_editor_names

    assert bench_editor_names("none, grace") == ["none", "grace"]
    every = bench_editor_names("all")
    assert "none" in every and "grace" in every and "malmen" not in every  # trainable editors need folds
