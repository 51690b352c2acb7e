"""What a run folder guarantees: one configuration per folder, one writer per shard, no line dropped silently."""

from __future__ import annotations

import json

import pytest

from clmedit.config import EditorHParams
from clmedit.data.schema import write_cases
from clmedit.errors import IntegrityError
from clmedit.files import locked
from clmedit.run import records
from clmedit.run.rundir import RunLockedError
from clmedit.run.runner import run
from tests.conftest import make_case
from tests.test_runner import Bump, _config


@pytest.fixture
def data(tmp_path):
    return write_cases(tmp_path / "cases.jsonl", [make_case(i) for i in range(3)])


def test_rerun_with_another_configuration_is_refused(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    out = tmp_path / "r"
    run(_config(data, out, limit=2), model, tok, editor=Bump())
    with pytest.raises(IntegrityError, match=r"another configuration \(hparams.seed: 0 -> 7\)"):
        run(_config(data, out), model, tok, editor=Bump(EditorHParams(seed=7)))
    with pytest.raises(IntegrityError, match="batch_size: 1 -> 2"):
        run(_config(data, out, batch_size=2), model, tok, editor=Bump())
    with pytest.raises(IntegrityError, match="data: the cases' content differs"):
        run(_config(write_cases(tmp_path / "other.jsonl", [make_case(5)]), out), model, tok, editor=Bump())
    assert len(records.read_records(out)) == 2  # nothing was relabelled or added


def test_same_configuration_resumes_with_a_larger_limit_and_overwrite_starts_afresh(
    llama_tiny, data, tmp_path
):
    model, tok = llama_tiny
    out = tmp_path / "r"
    run(_config(data, out, limit=1), model, tok, editor=Bump())
    more = Bump()
    run(_config(data, out, limit=3, device="cpu", verify_restore=True), model, tok, editor=more)
    assert more.calls == 2  # only the new cases
    fresh = Bump(EditorHParams(seed=7))
    run(_config(data, out), model, tok, editor=fresh, overwrite=True)
    assert fresh.calls == 3
    saved = json.loads((out / "run.json").read_text())["identity"]
    assert saved["hparams"]["seed"] == 7 and saved["editor"] == "bump"


def test_results_without_a_configuration_are_not_adopted(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    out = tmp_path / "r"
    out.mkdir()
    (out / "cases.jsonl").write_text('{"case_id": "case-0", "error": null, "scores": {}}\n')
    with pytest.raises(IntegrityError, match="which no clmedit run recorded"):
        run(_config(data, out), model, tok, editor=Bump(), overwrite=True)
    assert (out / "cases.jsonl").is_file()  # --overwrite removes only what a run wrote


def test_a_shard_being_written_by_another_process_is_refused(llama_tiny, data, tmp_path):
    model, tok = llama_tiny
    out = tmp_path / "r"
    with locked(out / "cases.0of2.jsonl"):  # what a running `clmedit run --shard 0/2` holds
        with pytest.raises(RunLockedError, match="already running shard 0/2"):
            run(_config(data, out, shard="0/2"), model, tok, editor=Bump())
        other = Bump()
        run(_config(data, out, shard="1/2"), model, tok, editor=other)  # another shard goes on
        assert other.calls == 1
    again = Bump()
    run(_config(data, out, shard="0/2"), model, tok, editor=again)  # once released, it runs
    assert again.calls == 2


def test_skipped_lines_are_counted_with_line_numbers_in_the_summary(llama_tiny, tmp_path):
    model, tok = llama_tiny
    good = [make_case(i).model_dump_json().encode() for i in range(2)]
    blank_target = make_case(3).model_dump()
    blank_target["target"] = "   "
    null_target = make_case(4).model_dump()
    null_target["target"] = None
    lines = [
        b"\xef\xbb\xbf" + good[0],  # a byte-order mark must not hide the first case
        b"{not json",
        b"\xff\xfe not utf-8",
        json.dumps(blank_target).encode(),
        json.dumps(null_target).encode(),
        good[1],
    ]
    data = tmp_path / "c.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = run(_config(data, tmp_path / "r"), model, tok, editor=Bump())
    assert sorted(r.case_id for r in records.read_records(out)) == ["case-0", "case-1"]
    skipped = json.loads((out / "summary.json").read_text())["skipped_lines"]
    assert skipped["count"] == 4
    assert [s["line"] for s in skipped["lines"]] == [2, 3, 4, 5]
    reasons = [s["reason"] for s in skipped["lines"]]
    assert reasons[0].startswith("malformed json") and reasons[1].startswith("non-utf8")
    assert reasons[2].startswith("invalid case (target)") and "empty" in reasons[2]
    assert reasons[3].startswith("invalid case (target)")


def test_a_case_beyond_the_context_window_is_a_per_case_error(llama_tiny, tmp_path):
    model, tok = llama_tiny
    long = make_case(1)
    long.prompt = "Intent: " + "sort a list " * model.config.max_position_embeddings + "\nCode:"
    data = write_cases(tmp_path / "c.jsonl", [make_case(0), long, make_case(2)])
    out = run(_config(data, tmp_path / "r"), model, tok, editor=Bump())
    by_id = {r.case_id: r for r in records.read_records(out)}
    assert by_id["case-1"].error["type"] == "InputError"
    assert "context window of 512" in by_id["case-1"].error["message"]
    assert by_id["case-0"].error is None and by_id["case-2"].error is None


def test_a_first_run_that_stopped_before_any_result_does_not_bind_the_folder(llama_tiny, data, tmp_path):
    """A mistyped model name fails after run.json is written; the corrected command must still run."""
    from clmedit.run.settings import RunConfig

    out = tmp_path / "r"
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(Exception, match="not-a-model"):
        run(RunConfig(model=str(tmp_path / "not-a-model"), data=str(data), out=out, fluency=False))
    assert (out / "run.json").is_file()
    model, tok = llama_tiny
    run(_config(data, out), model, tok, editor=Bump())
    assert len(records.read_records(out)) == 3


def _old_form(line: str) -> str:
    """A case line as clmedit wrote it before `CaseRecord`: the texts beside the scores, `error: null`."""
    rec = json.loads(line)
    rec["outputs"] = rec["scores"].pop("outputs")
    return json.dumps({**rec, "error": None})


def test_a_folder_written_in_the_old_form_resumes_and_reports(llama_tiny, data, tmp_path):
    from clmedit.report.tables import render_markdown
    from clmedit.results import load_summaries

    model, tok = llama_tiny
    out = run(_config(data, tmp_path / "r"), model, tok, editor=Bump())
    before = json.loads((out / "summary.json").read_text())
    lines = (out / "cases.jsonl").read_text().splitlines()
    (out / "cases.jsonl").write_text("".join(_old_form(x) + "\n" for x in lines[:2]))  # the third case lost
    old_summary = {k: v for k, v in before.items() if k != "order"}  # written before `order` existed
    (out / "summary.json").write_text(json.dumps(old_summary))
    assert "| bump |" in render_markdown(load_summaries([out]))  # reported as it is
    old = records.read_records(out)
    assert len(old) == 2 and all(r.ok and r.scores.outputs.prompt for r in old)  # the texts read back in the scores
    again = Bump()
    run(_config(data, out), model, tok, editor=again)
    assert again.calls == 1  # the two old-form lines count as done
    after = json.loads((out / "summary.json").read_text())
    assert after["counts"] == before["counts"] and after["metrics"] == before["metrics"]
    recs = sorted(records.read_records(out), key=lambda r: r.case_id)
    assert [r.case_id for r in recs] == ["case-0", "case-1", "case-2"]
    assert all(r.scores.outputs.prompt for r in recs)  # the old lines' texts are in their scores
