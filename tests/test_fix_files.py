"""Fix files load anywhere: made here, loaded in a new process on a rebuilt base model, same tokens.

For every registered editor (trainable ones fitted first) a fix file of three fixes is saved from
the tiny llama; a fresh Python process rebuilds the tiny llama from its seed, loads each fix file
*with its fixes.jsonl removed* (so nothing could be replayed or trained) and generates greedily;
the token ids must equal the in-memory edited model's. The same process checks that every fix
file is refused on another base model. Exports: a weight edit becomes a checkpoint that plain
transformers loads (no clmedit in that process); a GRACE edit becomes adapter files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import clmedit
from clmedit.cli import app
from clmedit.config import preset_path
from clmedit.data.schema import write_cases
from clmedit.editors.base import editor_class, editor_names, get_editor
from clmedit.fixes.artifact import load_artifact, save_artifact
from clmedit.fixes.export import export_fix
from clmedit.models.load import load_model
from clmedit.models.text import prompt_ids, target_ids
from clmedit.models.tiny import tiny_model
from tests.conftest import greedy_ids, make_case
from tests.test_conformance import ONE_TOKEN_ON_TINY

N_NEW = 8
TARGETS = ("sorted(xs, reverse=True)", "os.path.join(a, b)", "json.load(f)")
SRC = str(Path(clmedit.__file__).resolve().parents[1])

# Runs in a new process: rebuild the tiny llama, load each fix file, generate; then try another base.
LOAD_ELSEWHERE = """
import json, sys, torch
from clmedit.errors import IntegrityError
from clmedit.models.text import prompt_ids
from clmedit.models.tiny import tiny_model
from clmedit.fixes.artifact import load_artifact
root, names, prompts, n = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
out = {}
for name in names:
    model, tok = tiny_model("llama")
    load_artifact(model, tok, f"{root}/{name}")
    ids = {}
    for p in prompts:
        x = torch.tensor([prompt_ids(tok, p)])
        with torch.no_grad():
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
        ids[p] = y[0, x.shape[1]:].tolist()
    other, tok = tiny_model("llama", seed=1)
    try:
        load_artifact(other, tok, f"{root}/{name}")
        refused = None
    except IntegrityError as err:
        refused = str(err)
    out[name] = {"ids": ids, "refused": refused}
print(json.dumps(out))
"""


def _python(code: str, *args: str, clmedit_path: bool = True) -> str:
    env = {"PYTHONPATH": SRC} if clmedit_path else {}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
        env={**_base_env(), **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def tiny_editor(name: str, **overrides):
    """Editor `name` with its tiny-model preset (when it ships one)."""
    tiny = preset_path(editor_class(name).name, "tiny")
    return get_editor(name, preset=str(tiny) if tiny.is_file() else None, **overrides)


def _fixes(name: str, tok) -> list:
    cases = [make_case(i, target=t) for i, t in enumerate(TARGETS)]
    if name in ONE_TOKEN_ON_TINY:  # as the conformance suite: one-token targets on a random model
        for c in cases:
            c.target = tok.decode(target_ids(tok, c.prompt, c.target)[:1]).strip()
    return cases


@pytest.fixture(scope="module")
def made_and_loaded(tmp_path_factory):
    """{editor: (in-memory ids, unedited ids)} and what the other process got for each."""
    root = tmp_path_factory.mktemp("fixes")
    base, tok = tiny_model("llama")
    prompts = [make_case(i).prompt for i in range(3)] + [make_case(0).rephrase, make_case(5).prompt]
    unedited = {p: greedy_ids(base, tok, p, N_NEW) for p in prompts}
    here = {}
    for name in editor_names():
        model, tok = tiny_model("llama")
        editor = tiny_editor(name)
        if editor.trainable:
            editor.fit(model, tok, [make_case(i) for i in range(3, 7)])
        save_artifact(model, tok, editor, _fixes(name, tok), root / name, "tiny-llama")
        (root / name / "fixes.jsonl").unlink()  # loading must not need (or replay) the fixes
        here[name] = {p: greedy_ids(model, tok, p, N_NEW) for p in prompts}
    args = (str(root), json.dumps(editor_names()), json.dumps(prompts), str(N_NEW))
    return here, unedited, json.loads(_python(LOAD_ELSEWHERE, *args))


@pytest.mark.slow
@pytest.mark.parametrize("name", editor_names())
def test_fix_file_loads_in_a_new_process_with_the_same_tokens(name, made_and_loaded):
    here, unedited, elsewhere = made_and_loaded
    if name != "none":
        assert here[name] != unedited, f"{name} changed nothing; the comparison would prove nothing"
    assert elsewhere[name]["ids"] == here[name]
    assert "another base model" in elsewhere[name]["refused"]


def test_trained_editor_fix_file_loads_without_any_fit(tmp_path):
    """A-GRACE's fix file carries its encoder: a never-fitted editor in a fresh model reproduces it."""
    model, tok = tiny_model("llama")
    editor = tiny_editor("agrace")
    editor.fit(model, tok, [make_case(i) for i in range(3, 7)])
    fixes = _fixes("agrace", tok)[:2]
    save_artifact(model, tok, editor, fixes, tmp_path / "fix", "tiny")
    want = {c.prompt: greedy_ids(model, tok, c.prompt, N_NEW) for c in fixes}
    fresh, tok = tiny_model("llama")
    result = clmedit.load_edited(fresh, tmp_path / "fix", tok)
    loaded = result.info["editor"]
    assert loaded is not editor and loaded.encoder is not None
    assert {c.prompt: greedy_ids(fresh, tok, c.prompt, N_NEW) for c in fixes} == want
    loaded.apply(fresh, tok, [make_case(4, target="x + 1")])  # lifelong: keeps editing the loaded edit
    assert {c.prompt: greedy_ids(fresh, tok, c.prompt, N_NEW) for c in fixes} == want


def test_many_grace_fixes_load_fast_and_exactly(tmp_path):
    model, tok = tiny_model("llama")
    fixes = [make_case(i, target=f"f({i})") for i in range(100)]
    editor = tiny_editor("grace", n_iter=2)
    save_artifact(model, tok, editor, fixes, tmp_path / "fix", "tiny")
    probe = [fixes[0].prompt, fixes[57].prompt, fixes[99].prompt]
    want = [greedy_ids(model, tok, p, N_NEW) for p in probe]
    fresh, tok = tiny_model("llama")
    start = time.perf_counter()
    load_artifact(fresh, tok, tmp_path / "fix")
    seconds = time.perf_counter() - start
    assert [greedy_ids(fresh, tok, p, N_NEW) for p in probe] == want
    assert seconds < 1.0, f"loading 100 GRACE fixes took {seconds:.2f} s"


EXPORTED = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
out = []
for ids in json.loads(sys.argv[2]):
    x = torch.tensor([ids])
    with torch.no_grad():
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=int(sys.argv[3]), do_sample=False)
    out.append(y[0, x.shape[1]:].tolist())
assert "clmedit" not in sys.modules
print(json.dumps(out))
"""


def test_exported_weight_edit_loads_with_plain_transformers(tmp_path):
    model, tok = tiny_model("llama")
    fixes = _fixes("ft", tok)[:1]  # FT-L on a random tiny model reaches one multi-token target
    save_artifact(model, tok, tiny_editor("ft"), fixes, tmp_path / "fix", "tiny")
    n = max(len(target_ids(tok, c.prompt, c.target)) for c in fixes)
    want = [greedy_ids(model, tok, c.prompt, n) for c in fixes]
    for c, ids in zip(fixes, want):  # the fix is in the edited model
        assert ids[: len(target_ids(tok, c.prompt, c.target))] == target_ids(tok, c.prompt, c.target)
    fresh, tok = tiny_model("llama")
    assert export_fix(fresh, tok, tmp_path / "fix", tmp_path / "hf")["kind"] == "checkpoint"
    inputs = json.dumps([prompt_ids(tok, c.prompt) for c in fixes])
    got = json.loads(_python(EXPORTED, str(tmp_path / "hf"), inputs, str(n), clmedit_path=False))
    assert got == want


def test_exported_grace_edit_is_adapter_files_for_load_edited(tmp_path):
    """`clmedit apply` then `clmedit export` of a GRACE edit; load_edited puts it on a loaded base model."""
    fixes_file = write_cases(tmp_path / "fixes.jsonl", _fixes("grace", tiny_model("llama")[1])[:2])
    folder = tmp_path / "tiny"
    model, tok = tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cli = CliRunner()
    args = ["apply", "--model", str(folder), "-e", "grace", "--preset", str(preset_path("grace", "tiny"))]
    done = cli.invoke(app, [*args, "--fixes", str(fixes_file), "--out", str(tmp_path / "fix")])
    assert done.exit_code == 0, done.output
    args = ["export", "--model", str(folder), "--load", str(tmp_path / "fix"), "--out", str(tmp_path / "ad")]
    done = cli.invoke(app, args)
    assert done.exit_code == 0 and "clmedit.load_edited" in done.output, done.output
    assert {p.name for p in (tmp_path / "ad").iterdir()} == {"manifest.json", "edit.safetensors", "README.md"}
    edited, tok = load_model(str(folder), device="cpu")
    load_artifact(edited, tok, tmp_path / "fix")
    fresh, _ = load_model(str(folder), device="cpu")
    prompt = make_case(0).prompt
    unedited = greedy_ids(fresh, tok, prompt, N_NEW)
    result = clmedit.load_edited(fresh, tmp_path / "ad")
    assert greedy_ids(fresh, tok, prompt, N_NEW) == greedy_ids(edited, tok, prompt, N_NEW) != unedited
    result.restore()
    assert greedy_ids(fresh, tok, prompt, N_NEW) == unedited


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_adding_fixes_to_a_fix_file_keeps_every_fix_and_leaves_the_old_file_alone(tiny_dir, tmp_path):
    """`apply --load OLD --fixes MORE --out NEW`: NEW holds the old edit (not re-applied) and the new fix."""
    cli = CliRunner()
    first, more = tmp_path / "first.jsonl", tmp_path / "more.jsonl"
    first.write_text("".join(json.dumps({"prompt": make_case(i).prompt, "target": t}) + "\n"
                             for i, t in enumerate(TARGETS[:2])))  # fmt: skip
    more.write_text(json.dumps({"prompt": make_case(2).prompt, "target": TARGETS[2]}) + "\n")
    base = ["apply", "--model", str(tiny_dir)]
    grace = ["--editor", "grace", "--preset", str(preset_path("grace", "tiny"))]
    done = cli.invoke(app, [*base, *grace, "--fixes", str(first), "--out", str(tmp_path / "old")])
    assert done.exit_code == 0, done.output
    before = _files(tmp_path / "old")
    done = cli.invoke(app, [*base, "--load", str(tmp_path / "old"), "--fixes", str(more), "--out", str(tmp_path / "new")])
    assert done.exit_code == 0, done.output
    assert "2 fix(es) from" in done.output and "and 1 added" in done.output
    assert _files(tmp_path / "old") == before  # the input fix file is untouched
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    ids = [json.loads(line)["case_id"] for line in (tmp_path / "new" / "fixes.jsonl").read_text().splitlines()]
    assert manifest["fixes"] == 3 and ids == ["fix-0", "fix-1", "fix-2"]

    old_model, tok = load_model(str(tiny_dir))
    load_artifact(old_model, tok, tmp_path / "old")
    new_model, _ = load_model(str(tiny_dir))
    load_artifact(new_model, tok, tmp_path / "new")
    for i in range(2):  # the old fixes give the old file's tokens
        prompt = make_case(i).prompt
        assert greedy_ids(new_model, tok, prompt, N_NEW) == greedy_ids(old_model, tok, prompt, N_NEW)
    prompt = make_case(2).prompt
    want = target_ids(tok, prompt, TARGETS[2])
    assert greedy_ids(old_model, tok, prompt, len(want)) != want  # the new fix was not in the old file
    assert greedy_ids(new_model, tok, prompt, len(want)) == want

    refused = {  # each refused before anything is written
        "is an input": ["--load", str(tmp_path / "old"), "--fixes", str(more), "--out", str(tmp_path / "old")],
        "already in": ["--load", str(tmp_path / "new"), "--fixes", str(tmp_path / "new" / "fixes.jsonl"),
                       "--out", str(tmp_path / "x")],  # fmt: skip
        "holds a grace edit": ["--load", str(tmp_path / "old"), "-e", "rome", "--fixes", str(more), "--out", "y"],
        "keeps its own hparams": ["--load", str(tmp_path / "old"), "--hp", "n_iter=3", "--fixes", str(more),
                                  "--out", "y"],  # fmt: skip
    }
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "old", tampered)
    (tampered / "fixes.jsonl").write_text((tmp_path / "new" / "fixes.jsonl").read_text())
    refused["was altered"] = ["--load", str(tampered), "--fixes", str(more), "--out", str(tmp_path / "x")]
    for message, args in refused.items():
        done = cli.invoke(app, [*base, *args])
        assert done.exit_code == 2 and message in done.output, done.output
    assert _files(tmp_path / "old") == before and not (tmp_path / "x").exists()
