"""Sequential (lifelong) editing: the session's one copy per tensor, the runner's checkpoints, resume.

The runner tests use `Shift`, a real (tiny) weight edit whose size depends on how many edits came
before, so a replay that went wrong would show in the model; the editor tests use the real ones.
"""

from __future__ import annotations

import json

import pytest
import torch

from clmedit.config import preset_path
from clmedit.data.schema import Neighbour, write_cases
from clmedit.editors.base import Editor, EditResult
from clmedit.editors.session import EditSession, backup_weights
from clmedit.errors import InputError, IntegrityError
from clmedit.grid.cell import run
from clmedit.lifelong import checkpoint as ckpt
from clmedit.lifelong.checkpoint import checkpoint_states
from clmedit.lifelong.sequence import run_sequential
from clmedit.models.arch import arch_of
from clmedit.models.fingerprint import fingerprint, fingerprint_diff
from clmedit.results import read_edits
from clmedit.run.settings import RunConfig
from tests.conftest import make_case
from tests.test_conformance import _editor


class Shift(Editor):
    """Adds 0.01 x (number of earlier applies + 1) to one row per case of a down_proj; undo by backup."""

    name = "shift"

    def __init__(self, hparams=None, fail_on=(), interrupt_at=None):
        super().__init__(hparams)
        self.calls, self.fail_on, self.interrupt_at = 0, set(fail_on), interrupt_at

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        weight = arch_of(model).down_proj_module(model, 1).weight
        result.undo.append(backup_weights({"w": weight}))
        if cases[0].case_id in self.fail_on:
            raise ValueError(f"cannot edit {cases[0].case_id}")
        with torch.no_grad():
            for i, case in enumerate(cases):
                weight[int(case.case_id.split("-")[1]) % weight.shape[0]] += 0.01 * (self.calls + i)


def _config(data, out, **kw) -> RunConfig:
    return RunConfig(model="tiny", editor="shift", data=str(data), out=out, fluency=False, **kw)


@pytest.fixture
def data(tmp_path):
    return write_cases(tmp_path / "cases.jsonl", [make_case(i) for i in range(6)])


# --- the session ---------------------------------------------------------------------------------


def test_session_keeps_the_first_copy_of_each_tensor_and_restores_bitwise(llama_tiny):
    model, _ = llama_tiny
    before = fingerprint(model)
    w1 = arch_of(model).down_proj_module(model, 1).weight
    w2 = arch_of(model).down_proj_module(model, 2).weight
    session = EditSession()
    for step in range(5):
        result = EditResult(undo=[backup_weights({"a": w1, "b": w2} if step else {"a": w1})])
        with torch.no_grad():
            w1.add_(0.1)
            w2.mul_(1.5 if step else 1.0)  # the first apply touches w1 only
        session.absorb(result)
        assert result.undo == [] and result.restored  # the session owns the undo now
    assert session.saved == {("tensor", id(w1)), ("tensor", id(w2))}
    assert sum(len(u.saved) for u in session.undo) == 2  # one copy of each tensor, not one per apply
    session.restore()
    assert fingerprint(model) == before


@pytest.mark.parametrize("name", ["ft", "rome", "memit", "alphaedit", "ultraedit", "wise", "grace"])
def test_sequential_applies_of_real_editors_hold_one_copy_and_restore_bitwise(name, llama_tiny):
    model, tok = llama_tiny
    editor = _editor(name)
    before = fingerprint(model)
    params = dict(model.named_parameters())
    session = EditSession()
    for i in range(4):
        session.absorb(editor.apply(model, tok, [make_case(i, target="json.load(f)")]))
    after = fingerprint(model)
    changed = [n for n in fingerprint_diff(before, after) if n in params and n in after]  # WISE: none
    tensors = {k for k in session.saved if k[0] == "tensor"}
    assert tensors == {("tensor", id(params[n])) for n in changed}  # each touched weight copied once
    if name == "alphaedit":  # and its prior over kept keys: one entry per layer, not one per apply
        assert len(session.saved) - len(tensors) == len(editor._prior) > 0
    session.restore()
    assert fingerprint(model) == before
    assert not getattr(editor, "_prior", None)  # AlphaEdit's prior holds no edit any more


# --- the plan ------------------------------------------------------------------------------------


def test_checkpoints_fall_at_the_first_call_reaching_them():
    assert checkpoint_states([1, 2, 3, 4, 5], [1, 3, 100]) == {1: [1], 3: [3], 5: []}
    assert checkpoint_states([2, 4, 5], [1, 3]) == {1: [1], 2: [3], 3: []}  # batches of 2
    assert checkpoint_states([4], [1, 2, 4]) == {1: [1, 2, 4]}


# --- the runner ----------------------------------------------------------------------------------


def test_sequential_run_scores_every_edit_so_far_and_restores(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    before = fingerprint(model)
    out = run(_config(data, tmp_path / "r", sequential=5, checkpoints="1,3"), model, tok, editor=Shift())
    assert fingerprint(model) == before  # the session was undone, bitwise
    edits = read_edits(out)
    assert [e["apply"] for e in edits] == [0, 1, 2, 3, 4] and [e["edits"] for e in edits] == [1, 2, 3, 4, 5]
    assert all(e["error"] is None and e["seconds"] > 0 and e["rss_bytes"] > 0 for e in edits)
    files = sorted(p.name for p in (out / "checkpoints").glob("*.jsonl"))
    assert files == ["edits-000001.jsonl", "edits-000003.jsonl", "edits-000005.jsonl"]
    last = [
        json.loads(line) for line in (out / "checkpoints" / "edits-000005.jsonl").read_text().splitlines()
    ]
    assert [r["case_id"] for r in last] == [f"case-{i}" for i in range(5)]  # the earliest edit too
    assert [r["edit"] for r in last] == [1, 2, 3, 4, 5]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "sequential" and summary["sequential"]["complete"]
    rows = summary["sequential"]["checkpoints"]
    assert [(r["edits"], r["applied"], r["scored"]) for r in rows] == [(1, 1, 1), (3, 3, 3), (5, 5, 5)]
    assert summary["counts"] == {"cases": 5, "edits": 5, "applied": 5, "failed": 0, "apply_calls": 5}
    assert "| shift | 3 | 3 |" in (out / "table.md").read_text()


def test_batches_combine_with_sequential(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    before = fingerprint(model)
    editor = Shift()
    out = run(
        _config(data, tmp_path / "r", sequential=5, checkpoints="1,3", batch_size=2),
        model,
        tok,
        editor=editor,
    )
    assert editor.calls == 3 and fingerprint(model) == before
    assert [len(e["case_ids"]) for e in read_edits(out)] == [2, 2, 1]
    rows = json.loads((out / "summary.json").read_text())["sequential"]["checkpoints"]
    assert [(r["edits"], r["requested"], r["scored"]) for r in rows] == [(2, [1], 2), (4, [3], 4), (5, [], 5)]


def test_neighbours_that_are_edited_inputs_are_excluded_and_counted(llama_tiny, tmp_path):
    model, tok = llama_tiny
    cases = [make_case(i) for i in range(3)]
    cases[1].neighbours[0] = Neighbour(prompt=cases[0].prompt)  # case 0's edit changes this answer
    cases[2].neighbours = [Neighbour(prompt=cases[0].rephrase)]  # nothing left to score specificity on
    data = write_cases(tmp_path / "c.jsonl", cases)
    out = run(_config(data, tmp_path / "r", sequential=3, checkpoints="1"), model, tok, editor=Shift())
    rows = json.loads((out / "summary.json").read_text())["sequential"]["checkpoints"]
    assert [(r["edits"], r["neighbours_excluded"], r["specificity_cases"]) for r in rows] == [
        (1, 0, 1),
        (3, 2, 2),
    ]
    last = {r["case_id"]: r for r in map(json.loads, (out / "checkpoints" / "edits-000003.jsonl").open())}
    assert last["case-1"]["neighbours_kept"] == 4 and len(last["case-1"]["scores"]["outputs"]["neighbours"]) == 4
    assert last["case-2"]["neighbours_kept"] == 0


def test_failed_edit_is_recorded_and_left_out(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    before = fingerprint(model)
    config = _config(data, tmp_path / "r", sequential=4, checkpoints="2", verify_restore=True)
    out = run(config, model, tok, editor=Shift(fail_on={"case-1"}))
    assert fingerprint(model) == before
    assert [e["error"] is None for e in read_edits(out)] == [True, False, True, True]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["failures"]["by_type"] == {"ValueError": 1}
    assert [(r["edits"], r["applied"]) for r in summary["sequential"]["checkpoints"]] == [(2, 1), (4, 3)]


def test_interrupted_run_resumes_by_replaying_and_keeps_checkpoints(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    before = fingerprint(model)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run(_config(data, out, sequential=5, checkpoints="1,2"), model, tok, editor=Shift(interrupt_at=4))
    assert fingerprint(model) == before  # restored on the way out
    first = (out / "checkpoints" / "edits-000002.jsonl").read_text()
    assert len(read_edits(out)) == 3
    again = Shift()
    run(_config(data, out, sequential=5, checkpoints="1,2"), model, tok, editor=again)
    assert again.calls == 5  # 3 replayed, 2 new
    assert [e["apply"] for e in read_edits(out)] == [0, 1, 2, 3, 4]  # each call recorded once
    assert (out / "checkpoints" / "edits-000002.jsonl").read_text() == first  # never redone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequential"]["complete"] and fingerprint(model) == before
    done = Shift()  # a finished run is not replayed
    run(_config(data, out, sequential=5, checkpoints="1,2"), model, tok, editor=done)
    assert done.calls == 0
    more = Shift()  # a larger N continues the same sequence
    run(_config(data, out, sequential=6, checkpoints="1,2"), model, tok, editor=more)
    assert more.calls == 6 and len(read_edits(out)) == 6


def test_a_replay_that_gives_another_model_is_refused(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    out = tmp_path / "r"
    run(_config(data, out, sequential=3, checkpoints="1"), model, tok, editor=Shift())
    (out / "checkpoints" / "edits-000001.state").write_text("another model\n")
    with pytest.raises(IntegrityError, match="did not give the model"):
        run(_config(data, out, sequential=4, checkpoints="1"), model, tok, editor=Shift())


def test_sequential_usage_errors(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    with pytest.raises(InputError, match="only 6 cases"):
        run_sequential(_config(data, tmp_path / "a", sequential=7), model, tok, editor=Shift())
    with pytest.raises(InputError, match="cannot be sharded"):
        run_sequential(_config(data, tmp_path / "b", sequential=2, shard="0/2"), model, tok, editor=Shift())
    with pytest.raises(ValueError, match="positive edit counts"):
        _config(data, tmp_path / "c", sequential=2, checkpoints="1,x")
    run(_config(data, tmp_path / "d", limit=2), model, tok, editor=Shift())
    with pytest.raises(IntegrityError, match="mode"):  # a single-edit folder is not continued sequentially
        run(_config(data, tmp_path / "d", sequential=2), model, tok, editor=Shift())


def test_score_sample_scores_a_fixed_random_sample_of_the_edited_cases(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    config = _config(data, tmp_path / "r", sequential=5, checkpoints="1,3", score_sample=2, seed=2)
    out = run(config, model, tok, editor=Shift())
    ids = [f"case-{i}" for i in range(5)]
    scored = {n: ckpt.read_scored(ckpt.checkpoint_path(out, n)).keys() for n in (1, 3, 5)}
    assert scored[1] == {"case-0"} and len(scored[3]) == 2
    assert scored[5] == ckpt.score_sample(ids, 2, seed=2) and scored[5] != {"case-0", "case-1"}  # not the first two
    assert scored[5] & set(ids[:3]) <= scored[3]  # one fixed sample: a case sampled later was sampled earlier
    assert ckpt.score_sample(ids, 2, seed=1) != scored[5]  # the seed draws it
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequential"]["score_sample"] == {"size": 2, "seed": 2}
    assert [r["scored"] for r in summary["sequential"]["checkpoints"]] == [1, 2, 2]
    assert summary["sequential"]["complete"]
    with pytest.raises(ValueError, match="--score-sample"):
        _config(data, tmp_path / "s", score_sample=2)


def test_a_sampled_run_computes_neighbour_answers_only_for_cases_a_checkpoint_may_score(llama_tiny, tmp_path):
    from clmedit.run.prepare import _read_answers, answers_fingerprint, answers_path

    model, tok = llama_tiny
    cases = [make_case(i) for i in range(12)]
    for c in cases:  # neighbour prompts of this test only, so the shared answer cache holds none of them
        c.neighbours = [Neighbour(prompt=f"{n.prompt} ({tmp_path.name} {c.case_id})") for n in c.neighbours]
    data = write_cases(tmp_path / "cases.jsonl", cases)
    config = _config(data, tmp_path / "r", sequential=12, checkpoints="12", score_sample=2, seed=3)
    run(config, model, tok, editor=Shift())
    candidates = {c.case_id for c in ckpt.may_score(cases, [12], 2, seed=3)}
    assert len(candidates) == 4 and candidates >= ckpt.score_sample([c.case_id for c in cases], 2, seed=3)
    cached = _read_answers(answers_path(answers_fingerprint(model, tok)))
    answered = {c.case_id for c in cases if any(n.prompt in cached for n in c.neighbours)}
    assert answered == candidates  # 4 of 12 cases: the sample and as many again for failed edits
    assert len(ckpt.read_scored(ckpt.checkpoint_path(tmp_path / "r", 12))) == 2


def test_may_score_covers_every_checkpoint_sample_and_the_places_of_failed_edits():
    cases = [make_case(i) for i in range(30)]
    ids = [c.case_id for c in cases]
    chosen = {c.case_id for c in ckpt.may_score(cases, [1, 10, 30], 3, seed=0)}
    for n in (1, 10, 30):
        assert ckpt.score_sample(ids[:n], 3, seed=0) <= chosen
        survivors = [i for i in ids[:n] if i not in sorted(ckpt.score_sample(ids[:n], 3, seed=0))[:2]]
        assert ckpt.score_sample(survivors, 3, seed=0) <= chosen  # two sampled edits failed: still covered
    assert len(chosen) < 30 and ckpt.may_score(cases, [30], None, seed=0) == cases


# --- real editors through the runner -------------------------------------------------------------


@pytest.mark.parametrize("name", ["ft", "rome", "memit", "alphaedit", "ultraedit", "wise", "grace"])
def test_sequential_run_of_real_editors(name, llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    before = fingerprint(model)
    config = RunConfig(model="tiny", editor=name, data=str(data), out=tmp_path / "r", fluency=False,
                       sequential=3, checkpoints="1", preset=str(preset_path(name, "tiny")))  # fmt: skip
    out = run(config, model, tok)
    assert fingerprint(model) == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequential"]["complete"] and summary["counts"]["applied"] == 3
    assert [r["scored"] for r in summary["sequential"]["checkpoints"]] == [1, 3]
    # a longer sequence resumes from the snapshot of the three edits (checked to be the same model)
    run(config.model_copy(update={"sequential": 4, "checkpoints": "1,3"}), model, tok)
    rows = json.loads((out / "summary.json").read_text())["sequential"]["checkpoints"]
    assert [r["scored"] for r in rows] == [1, 3, 4]
    if name == "grace":  # one codebook keeps every edit: the first is still retained after the fourth
        # (ROUGE-L: on the tiny byte-level tokenizer the protocol's budget adds a stray byte, so EM is 0)
        assert [r["metrics"]["effectiveness"]["rouge_l"] for r in rows] == [100.0, 100.0, 100.0]
    assert fingerprint(model) == before


def test_trainable_editor_is_fitted_on_the_other_fold_and_edits_fold_zero(llama_tiny, tmp_path):
    model, tok = llama_tiny
    data = write_cases(tmp_path / "c.jsonl", [make_case(i) for i in range(8)])
    config = RunConfig(model="tiny", editor="malmen", data=str(data), out=tmp_path / "r", fluency=False,
                       sequential=3, checkpoints="1", folds=2, preset=str(preset_path("malmen", "tiny")))  # fmt: skip
    out = run(config, model, tok)
    assert (out / "fold0" / "DONE").is_file()
    from clmedit.run.folds import split_folds

    fold0 = [c.case_id for c in split_folds([make_case(i) for i in range(8)], 2, 0)[0]]
    assert [e["case_ids"][0] for e in read_edits(out)] == fold0[:3]
    with pytest.raises(InputError, match="--folds 2"):
        run(config.model_copy(update={"folds": 1, "out": tmp_path / "s"}), model, tok)


def _counting(editor, interrupt_at=None):
    """`editor` whose applies are counted (`editor.applies`); the `interrupt_at`-th raises KeyboardInterrupt."""
    apply, editor.applies = editor.apply, 0

    def counted(*args, **kwargs):
        editor.applies += 1
        if editor.applies == interrupt_at:
            raise KeyboardInterrupt
        return apply(*args, **kwargs)

    editor.apply = counted
    return editor


def _scored(out, edits: int) -> dict:
    """A checkpoint's scores by case (timings left out)."""
    return {k: r.scores.model_dump() for k, r in ckpt.read_scored(ckpt.checkpoint_path(out, edits)).items()}


@pytest.mark.parametrize("name", ["ft", "alphaedit", "ultraedit", "wise", "grace"])
def test_a_resumed_run_loads_its_snapshot_and_ends_where_an_uninterrupted_one_does(name, llama_tiny, data, tmp_path):
    """Interrupted at the 4th edit, the rerun loads the snapshot of the first three (re-applying none of
    them) and reaches bitwise the model and the scores of a run that was never interrupted."""
    model, tok = llama_tiny
    before = fingerprint(model)
    config = RunConfig(model="tiny", editor=name, data=str(data), out=tmp_path / "a", fluency=False, sequential=5,
                       checkpoints="2", snapshot_every=1, preset=str(preset_path(name, "tiny")))  # fmt: skip
    whole = run(config, model, tok, editor=_counting(_editor(name)))
    cut = config.model_copy(update={"out": tmp_path / "b"})
    with pytest.raises(KeyboardInterrupt):
        run(cut, model, tok, editor=_counting(_editor(name), interrupt_at=4))
    position = json.loads((tmp_path / "b" / "checkpoints" / "snapshot" / "position.json").read_text())
    assert (position["calls"], position["case_ids"]) == (3, ["case-0", "case-1", "case-2"])
    again = _counting(_editor(name))
    run(cut, model, tok, editor=again)
    assert again.applies == 2  # only the two edits never applied; the three before came from the snapshot
    assert fingerprint(model) == before
    for edits in (2, 5):
        state = f"checkpoints/edits-{edits:06d}.state"
        assert (tmp_path / "b" / state).read_text() == (whole / state).read_text()
        assert _scored(tmp_path / "b", edits) == _scored(whole, edits)


def test_a_snapshot_off_the_recorded_path_is_not_used(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    config = RunConfig(model="tiny", editor="grace", data=str(data), out=tmp_path / "r", fluency=False,
                       sequential=3, checkpoints="1", preset=str(preset_path("grace", "tiny")))  # fmt: skip
    run(config, model, tok)
    position = tmp_path / "r" / "checkpoints" / "snapshot" / "position.json"
    moved = json.loads(position.read_text())
    position.write_text(json.dumps({**moved, "case_ids": ["case-0", "case-2", "case-1"]}))
    again = _counting(_editor("grace"))
    run(config.model_copy(update={"sequential": 4}), model, tok, editor=again)
    assert again.applies == 4  # the three recorded edits re-applied, then the new one
