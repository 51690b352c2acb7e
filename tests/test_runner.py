"""The runner on a tiny model: outputs, resume after a kill, failures recorded, shards, restore guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clmedit.data.schema import write_cases
from clmedit.editors.base import Editor, EditResult, backup_weights
from clmedit.errors import IntegrityError
from clmedit.models.arch import arch_of
from clmedit.models.fingerprint import fingerprint
from clmedit.run import records
from clmedit.run.folds import split_folds
from clmedit.run.prepare import answers_fingerprint, answers_path
from clmedit.run.runner import run, shard_cases
from clmedit.run.settings import RunConfig, parse_shard
from tests.conftest import make_case


class Bump(Editor):
    """A tiny real weight edit: shifts one down_proj row (undo by backup), counting its apply calls."""

    name = "bump"

    def __init__(self, hparams=None, fail_on=(), interrupt_at=None, leak_on=()):
        super().__init__(hparams)
        self.calls, self.fail_on, self.interrupt_at, self.leak_on = (
            0,
            set(fail_on),
            interrupt_at,
            set(leak_on),
        )

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        self.calls += 1
        if self.interrupt_at is not None and self.calls > self.interrupt_at:
            raise KeyboardInterrupt  # what a kill (Ctrl-C) looks like from inside the loop
        weight = arch_of(model).down_proj_module(model, 1).weight
        if cases[0].case_id in self.leak_on:
            with torch.no_grad():
                weight[0] += 1.0  # a broken editor: changes the model, then fails without undo
        if cases[0].case_id in self.fail_on | self.leak_on:
            raise ValueError(f"cannot edit {cases[0].case_id}")
        result.undo.append(backup_weights({"w": weight}))
        with torch.no_grad():
            weight[0] += 0.5
        result.info = {"delta": torch.tensor(0.5), "big": torch.zeros(1000)}

    def key_record(self, model, tok, case):  # a toy key: (prompt length, 1)
        texts = [case.prompt, case.rephrase, *(n.prompt for n in case.neighbours)]
        k = torch.tensor([[float(len(p)), 1.0] for p in texts])
        d = (k[1:] - k[:1]).norm(dim=-1).tolist()
        return {"distances": {"rephrase": d[0], "neighbours": d[1:]}, "keys": {"neighbours": k[2:].tolist()}}


@pytest.fixture
def data(tmp_path):
    return write_cases(tmp_path / "cases.jsonl", [make_case(i) for i in range(3)])


def _config(data, out, **kw) -> RunConfig:
    return RunConfig(model="tiny", editor="bump", data=str(data), out=out, fluency=False, **kw)


def test_run_writes_records_summary_and_table(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    before = fingerprint(model)
    out = run(_config(data, tmp_path / "r", verify_restore=True, keys=True), model, tok, editor=Bump())
    recs = records.read_records(out)
    assert [r.case_id for r in recs] == [f"case-{i}" for i in range(3)]
    assert all(r.error is None and r.seconds > 0 and r.info["delta"] == 0.5 for r in recs)
    assert "big" not in recs[0].info  # large tensors stay out of the record
    case = make_case(0)
    dist = recs[0].info["distances"]
    assert dist["rephrase"] == pytest.approx(abs(len(case.rephrase) - len(case.prompt)))
    assert len(dist["neighbours"]) == 5 and len(recs[0].info["keys"]["neighbours"]) == 5
    assert set(recs[0].scores.effectiveness.model_dump()) == {"em", "bleu", "rouge_l"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"cases": 3, "ok": 3, "failed": 0, "apply_calls": 3, "budget_short": 0}
    assert summary["editor"] == "bump" and summary["config"]["editor"] == "bump"
    assert summary["label"] == "bump"  # unregistered: its name
    assert "| Eff. EM |" in (out / "table.md").read_text()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files behind
    assert fingerprint(model) == before  # every edit was undone


def test_budget_is_part_of_the_run_and_its_count_in_the_table(llama_tiny, tmp_path):
    model, tok = llama_tiny
    data = write_cases(tmp_path / "x.jsonl", [make_case(i, target="x") for i in range(2)])  # "x": 1 token, " x": 2
    out = run(_config(data, tmp_path / "r"), model, tok, editor=Bump())
    assert json.loads((out / "summary.json").read_text())["counts"]["budget_short"] == 2
    assert "CNLE: 2 of 2 cases in every row" in (out / "table.md").read_text()
    with pytest.raises(IntegrityError, match="budget"):  # results of the study's rule are never relabelled
        run(_config(data, tmp_path / "r", budget="in-context"), model, tok, editor=Bump())
    fitted = run(_config(data, tmp_path / "r2", budget="in-context"), model, tok, editor=Bump())
    assert json.loads((fitted / "summary.json").read_text())["counts"]["budget_short"] == 0


def test_killed_run_resumes_with_only_the_rest(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run(_config(data, out), model, tok, editor=Bump(interrupt_at=1))
    assert len(records.read_records(out)) == 1
    with open(out / "cases.jsonl", "a") as fh:  # a line torn by the kill is ignored and redone
        fh.write('{"case_id": "case-1", "sco')
    again = Bump()
    run(_config(data, out), model, tok, editor=again)
    assert again.calls == 2
    assert sorted(r.case_id for r in records.read_records(out)) == [f"case-{i}" for i in range(3)]


def test_failing_case_is_recorded_and_run_continues(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    out = run(_config(data, tmp_path / "r"), model, tok, editor=Bump(fail_on={"case-1"}))
    by_id = {r.case_id: r for r in records.read_records(out)}
    assert by_id["case-1"].error["type"] == "ValueError"
    assert "cannot edit case-1" in by_id["case-1"].error["message"]
    assert by_id["case-0"].error is None and by_id["case-2"].error is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["failures"]["by_type"] == {"ValueError": 1}
    again = Bump()  # a rerun retries only the failed case, and its success replaces the failure
    run(_config(data, out), model, tok, editor=again)
    assert again.calls == 1 and all(r.error is None for r in records.read_records(out))


def test_editor_that_leaks_a_failed_edit_stops_the_run(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    with pytest.raises(RuntimeError, match="left the model changed after case case-0"):
        run(_config(data, tmp_path / "r"), model, tok, editor=Bump(leak_on={"case-0"}))


def test_shards_partition_and_merge(llama_tiny, data, tmp_path):
    cases = [make_case(i) for i in range(7)]
    parts = [shard_cases(cases, (i, 3)) for i in range(3)]
    ids = [c.case_id for p in parts for c in p]
    assert sorted(ids) == sorted(c.case_id for c in cases) and len(set(ids)) == 7
    model, tok = llama_tiny
    out = tmp_path / "r"
    for i in range(2):
        run(_config(data, out, shard=f"{i}/2", limit=2), model, tok, editor=Bump())
    assert {p.name for p in out.glob("cases*.jsonl")} == {"cases.0of2.jsonl", "cases.1of2.jsonl"}
    assert json.loads((out / "summary.json").read_text())["counts"]["ok"] == 2


def test_folds_split_one_to_one_and_seeded():
    cases = [make_case(i) for i in range(9)]
    a, b = split_folds(cases, 2, seed=3)
    assert len(a) == 5 and len(b) == 4 and not {c.case_id for c in a} & {c.case_id for c in b}
    assert [c.case_id for c in split_folds(cases, 2, seed=3)[0]] == [c.case_id for c in a]


@pytest.mark.parametrize("spec", ["1/1", "a/2", "3", "-1/2"])
def test_bad_shard_is_rejected(spec):
    with pytest.raises(ValueError, match="i/n"):
        parse_shard(spec)


def test_base_answers_are_cached_under_the_model_fingerprint(llama_tiny, data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "cache"))
    model, tok = llama_tiny
    run(_config(data, tmp_path / "r", limit=1), model, tok, editor=Bump())
    cached = json.loads(answers_path(answers_fingerprint(model, tok)).read_text())["answers"]
    assert make_case(0).neighbours[0].prompt in cached
    assert not list(data.parent.glob("*.answers.*"))  # one home: nothing beside the data


@pytest.mark.slow
def test_grace_on_the_default_model_end_to_end(tmp_path):
    """The real slice: smollm2-135m, GRACE, one case; the edit works and leaves no trace."""
    from clmedit.run.setup import load_model_for

    model, tok = load_model_for("smollm2-135m", "cpu")
    before = fingerprint(model)
    data = write_cases(tmp_path / "c.jsonl", [make_case(0, target="sorted(xs, key=len, reverse=True)")])
    config = RunConfig(editor="grace", data=str(data), out=tmp_path / "r", fluency=False, verify_restore=True)
    out = run(config, model, tok)
    (rec,) = records.read_records(out)
    assert rec.error is None and rec.scores.effectiveness.em == 1.0
    assert rec.scores.specificity.em == 1.0
    assert fingerprint(model) == before


def test_base_answers_written_meanwhile_by_another_run_are_kept(llama_tiny, data, tmp_path, monkeypatch):
    """Two runs start on one dataset: the second's write merges, it does not clobber the first's."""
    import clmedit.eval.protocol as protocol

    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "cache"))
    model, tok = llama_tiny
    cache = answers_path(answers_fingerprint(model, tok))
    real_fill = protocol.fill_base_answers

    def fill_while_another_run_writes(*args, **kwargs):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"format": 1, "answers": {"a prompt only the other run saw": "its answer"}}))
        return real_fill(*args, **kwargs)

    monkeypatch.setattr(protocol, "fill_base_answers", fill_while_another_run_writes)
    run(_config(data, tmp_path / "r", limit=1), model, tok, editor=Bump())
    cached = json.loads(cache.read_text())["answers"]
    assert cached["a prompt only the other run saw"] == "its answer"
    assert make_case(0).neighbours[0].prompt in cached


class Memo(Editor):
    """A trainable toy editor: fit learns the number of training cases; save/load keep it in a file."""

    name = "memo"
    trainable = True

    def __init__(self, hparams=None, interrupt_at=None):
        super().__init__(hparams)
        self.fits = self.loads = self.calls = 0
        self.learned, self.interrupt_at = None, interrupt_at

    def fit(self, model, tok, train_cases, **kwargs):
        self.fits += 1
        self.learned = len(train_cases)
        return {"loss": 0.5}

    def save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "learned.json").write_text(json.dumps(self.learned))

    def load(self, directory):
        self.loads += 1
        self.learned = json.loads((Path(directory) / "learned.json").read_text())

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        self.calls += 1
        if self.interrupt_at is not None and self.calls > self.interrupt_at:
            raise KeyboardInterrupt
        result.info["learned"] = self.learned


class Unsaved(Memo):
    """A trainable editor that forgot to implement save/load (the base class's)."""

    name = "unsaved"
    save = Editor.save
    load = Editor.load


def test_two_folds_fit_save_and_reload_on_resume_without_refitting(llama_tiny, tmp_path):
    model, tok = llama_tiny
    data = write_cases(tmp_path / "c.jsonl", [make_case(i) for i in range(4)])
    out = tmp_path / "r"
    first = Memo(interrupt_at=3)  # fold 0 (2 cases) and one case of fold 1, then a kill
    with pytest.raises(KeyboardInterrupt):
        run(_config(data, out, folds=2), model, tok, editor=first)
    assert first.fits == 2 and (out / "fold0" / "DONE").is_file() and (out / "fold1" / "DONE").is_file()
    done = [json.loads((out / f"fold{k}" / "DONE").read_text()) for k in range(2)]
    assert [d["train_cases"] for d in done] == [2, 2] and all(d["fit_seconds"] >= 0 for d in done)
    again = Memo()
    run(_config(data, out, folds=2), model, tok, editor=again)
    assert (again.fits, again.loads, again.calls) == (0, 1, 1)  # fold 1's trained part reloaded
    # the fitting time of both folds is reported, though this invocation loaded what the first fitted
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fit_seconds"] == {str(k): d["fit_seconds"] for k, d in enumerate(done)}
    recs = records.read_records(out)
    assert len(recs) == 4 and all(r.error is None and r.info["learned"] == 2 for r in recs)
    assert sorted(r.fold for r in recs) == [0, 0, 1, 1]


def test_eval_limit_scores_the_first_cases_of_each_fold_and_trains_on_whole_folds(llama_tiny, tmp_path):
    from clmedit.run.folds import scored_cases, split_folds

    model, tok = llama_tiny
    cases = [make_case(i) for i in range(6)]
    data = write_cases(tmp_path / "c.jsonl", cases)
    config = _config(data, tmp_path / "r", folds=2, eval_limit=1)
    folds = split_folds(cases, 2, 0)
    assert [c.case_id for c in scored_cases(cases, config)] == sorted(
        (folds[0][0].case_id, folds[1][0].case_id), key=lambda i: int(i.split("-")[1])
    )
    editor = Memo()
    out = run(config, model, tok, editor=editor)
    recs = records.read_records(out)
    assert len(recs) == 2 and sorted(r.fold for r in recs) == [0, 1]
    assert all(r.info["learned"] == 3 for r in recs)  # each fit saw the whole other fold
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == 2
    # the folds come from the first `limit` cases: another limit is another run, refused in this folder
    with pytest.raises(IntegrityError, match="limit: None -> 4"):
        run(_config(data, out, folds=2, eval_limit=1, limit=4), model, tok, editor=Memo())


def test_trainable_editor_without_save_is_an_error_not_a_silent_retrain(llama_tiny, tmp_path):
    from clmedit.errors import NotSavableError

    model, tok = llama_tiny
    data = write_cases(tmp_path / "c.jsonl", [make_case(i) for i in range(2)])
    with pytest.raises((NotImplementedError, NotSavableError)):
        run(_config(data, tmp_path / "r", folds=2), model, tok, editor=Unsaved())


def test_batches_share_one_apply_call(llama_tiny, tmp_path):
    model, tok = llama_tiny
    before = fingerprint(model)
    data = write_cases(tmp_path / "c.jsonl", [make_case(i) for i in range(3)])
    editor = Bump()
    out = run(_config(data, tmp_path / "r", batch_size=2, verify_restore=True), model, tok, editor=editor)
    recs = sorted(records.read_records(out), key=lambda r: r.case_id)
    assert editor.calls == 2 and [r.batch_size for r in recs] == [2, 2, 1]
    assert recs[0].batch == recs[1].batch != recs[2].batch
    assert recs[0].seconds == recs[1].seconds  # one apply call, one cost
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"cases": 3, "ok": 3, "failed": 0, "apply_calls": 2, "budget_short": 0}
    assert fingerprint(model) == before


@pytest.mark.slow
def test_bench_runs_every_editor_on_a_tiny_model(tmp_path, monkeypatch):
    """bench(): one model load, a run per (task, editor) under out/<model>/<task>/<editor>, one table."""
    import clmedit.data.build as build
    from clmedit.grid.bench import bench
    from clmedit.models.tiny import tiny_model

    folder = tmp_path / "tiny-llama"
    net, tok = tiny_model("llama")
    net.save_pretrained(folder)
    tok.save_pretrained(folder)
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "cache"))
    real = build.build_dataset  # the real default dataset, with the quick embedder

    def quick(cfg, out, *a, **kw):
        return real(cfg.model_copy(update={"embedder": "bm25", "progress": False}), out, *a, **kw)

    monkeypatch.setattr(build, "build_dataset", quick)
    table, summaries = bench(str(folder), ["none", "grace"], ["cnle"], 2, tmp_path / "b", fluency=False)
    assert [s["editor"] for s in summaries] == ["none", "grace"]
    assert all(s["counts"] | {"budget_short": 0} == {"cases": 2, "ok": 2, "failed": 0, "apply_calls": 2, "budget_short": 0}
               for s in summaries)  # (how many targets the tiny tokenizer spells longer after the prompt: not asked here)
    runs = tmp_path / "b" / "tiny-llama" / "cnle"
    outputs = {
        e: {r["case_id"]: r["scores"]["outputs"]["prompt"] for r in map(json.loads, (runs / e / "cases.jsonl").open())}
        for e in ("none", "grace")
    }
    # the edit took effect in every case (on a random tiny model the study's GRACE, replacing at every
    # decoded token inside its ball, does not spell a multi-token target: effectiveness is checked elsewhere)
    assert outputs["none"].keys() == outputs["grace"].keys()
    assert all(outputs["grace"][c] != outputs["none"][c] for c in outputs["none"])
    assert "| Unedited |" in table and "| GRACE |" in table
    assert (tmp_path / "b" / "table.md").read_text().strip() == table.strip()


@pytest.mark.parametrize("marker", ["", "{}", '{"fit_seconds": "12"}', '{"fit_seconds": NaN}',
                                    '{"fit_seconds": -1}', '{"fit_seconds": true}', "[1, 2]", "not json"])  # fmt: skip
def test_a_fold_marker_without_a_trustworthy_fit_time_reports_none(tmp_path, marker):
    from clmedit.run.folds import recorded_fit_seconds

    (tmp_path / "DONE").write_text(marker)  # "": the marker of runs before fit times were recorded
    assert recorded_fit_seconds(tmp_path) is None
    (tmp_path / "DONE").write_text('{"fit_seconds": 12.5, "train_cases": 3}')
    assert recorded_fit_seconds(tmp_path) == 12.5
