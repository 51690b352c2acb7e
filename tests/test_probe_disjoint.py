"""No editor sees what it is scored on: folds are probe-disjoint, and an edit receives only its request.

The data is built like the study's: every case's neighbours are the nearest inputs of one shared pool,
so the two folds share many of them verbatim (and a case's prompt can be another case's neighbour).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clmedit.data.schema import EditCase, EditRequest, Neighbour, format_prompt, read_cases, write_cases
from clmedit.data.unprobed import write_unprobed
from clmedit.editors.base import Editor, EditResult
from clmedit.files import cache_root
from clmedit.grid.cell import run
from clmedit.models.text import prompt_ids
from clmedit.run.folds import disjoint_training, probe_texts, split_folds, training_half
from clmedit.run.settings import RunConfig

POOL = [f"open the file number {i} and read it" for i in range(7)]


def pooled_cases(n: int = 10, own: bool = True) -> list[EditCase]:
    """Cases whose neighbours come from one shared pool (plus, with `own`, one of their own); case 9's
    prompt is also a pool text, so whichever fold holds it, the other fold has neighbours equal to a prompt."""
    cases = []
    for i in range(n):
        text = POOL[0] if i == n - 1 else f"sort list {i} in reverse"
        nbs = [POOL[(i + k) % len(POOL)] for k in range(1, 5) if POOL[(i + k) % len(POOL)] != text]
        nbs += [f"sum the column {i} of a table"] if own else []
        cases.append(EditCase(
            case_id=f"case-{i}", task="cnle", prompt=format_prompt("cnle", text), target=f"xs[{i}]",
            rephrase=format_prompt("cnle", f"reverse-sort list {i}"),
            neighbours=[Neighbour(prompt=format_prompt("cnle", t)) for t in nbs],
        ))  # fmt: skip
    return cases


class Memoriser(Editor):
    """A test-only cheat: `fit` memorises every neighbour prompt it is shown, and an edit breaks every
    output except those of memorised prompts. Its specificity can only come from probes it was fitted on."""

    name = "memoriser"
    trainable = True

    def __init__(self, hparams=None):
        super().__init__(hparams)
        self.known: set[str] = set()
        self.fitted_on: list[list[EditCase]] = []
        self.unprobed_on: list[list[str]] = []

    def fit(self, model, tok, train_cases, unprobed=(), **kwargs):
        self.fitted_on.append(list(train_cases))
        self.unprobed_on.append(list(unprobed))
        self.known = {n.prompt for c in train_cases for n in c.neighbours} | set(unprobed)
        return {}

    def save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "known.json").write_text(json.dumps(sorted(self.known)))

    def load(self, directory):
        self.known = set(json.loads((Path(directory) / "known.json").read_text()))

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        known = {tuple(prompt_ids(tok, p)) for p in self.known}
        spared: list[bool] = []

        def before(module, args, kwargs):  # the prefill decides per row; decoding steps keep it
            ids = kwargs["input_ids"]
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            if ids.shape[1] > 1:
                spared[:] = [
                    tuple(r[m.bool()].tolist()) in known for r, m in zip(ids, mask[:, -ids.shape[1] :])
                ]

        def after(module, args, kwargs, out):
            for row, keep in enumerate(spared):
                if not keep:
                    out.logits[row, :, 7] += 1e4  # this row now says token 7 whatever it was
            return out

        hooks = [model.register_forward_pre_hook(before, with_kwargs=True),
                 model.register_forward_hook(after, with_kwargs=True)]  # fmt: skip
        result.undo.append(lambda: [h.remove() for h in hooks])


def _config(data, out, **kw) -> RunConfig:
    return RunConfig(model="tiny", editor="memoriser", data=str(data), out=out, fluency=False, folds=2, **kw)


def test_disjoint_training_drops_probe_cases_and_probe_neighbours():
    cases = pooled_cases()
    folds = split_folds(cases, 2, 0)
    for k in range(2):
        plain, _ = training_half(folds, k, overlap=True)
        assert probe_texts(plain) & probe_texts(folds[k])  # the plain split leaks: the test can fail
        train, counts = training_half(folds, k)
        assert not probe_texts(train) & probe_texts(folds[k])
        assert counts["train_cases"] == len(train) == len(plain) - counts["dropped_cases"]
        removed = sum(2 + len(c.neighbours) for c in plain) - sum(2 + len(c.neighbours) for c in train)
        assert counts["removed_inputs"] == removed > 0
        # whatever is not a probe is kept: every training case's own neighbour survives
        assert all(
            c.neighbours[-1].prompt.endswith(f"column {c.case_id[5:]} of a table\nCode:") for c in train
        )
    holder = next(k for k in range(2) if cases[-1] in folds[k])
    # case 9's prompt is a pool text, a neighbour in the other fold: fitting for that fold drops it whole
    train, counts = training_half(folds, 1 - holder)
    assert cases[-1] not in train and counts["dropped_cases"] == 1
    as_probe = cases[0].model_copy(update={"neighbours": [Neighbour(prompt=cases[1].rephrase)]})
    assert disjoint_training([cases[1], cases[2]], [as_probe])[1]["dropped_cases"] == 1


def test_fit_never_receives_a_test_probe_and_the_summary_says_what_was_removed(llama_tiny, tmp_path):
    model, tok = llama_tiny
    cases = pooled_cases()
    data = write_cases(tmp_path / "c.jsonl", cases)
    editor = Memoriser()
    out = run(_config(data, tmp_path / "r", eval_limit=1), model, tok, editor=editor)
    folds = split_folds(cases, 2, 0)
    assert len(editor.fitted_on) == 2
    for k, train in enumerate(editor.fitted_on):
        assert train and not probe_texts(train) & probe_texts(folds[k])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds_protocol"] == "probe-disjoint folds"
    assert {k: v["removed_inputs"] > 0 for k, v in summary["fold_training"].items()} == {"0": True, "1": True}


def test_default_data_folds_are_probe_disjoint():
    """On the default CNLE (when this machine has built it): what fit gets holds no probe of the test fold."""
    found = sorted((cache_root() / "data").glob("cnle-stdlib-*.jsonl"))
    if not found:
        pytest.skip("the default CNLE is not built here (clmedit data build, or any run on default:cnle)")
    folds = split_folds(read_cases(found[0]), 2, 0)
    for k in range(2):
        assert probe_texts(training_half(folds, k, overlap=True)[0]) & probe_texts(folds[k])  # it leaks
        assert not probe_texts(training_half(folds, k)[0]) & probe_texts(folds[k])


def test_memorising_neighbours_cannot_raise_test_specificity(llama_tiny, tmp_path):
    model, tok = llama_tiny
    data = write_cases(tmp_path / "c.jsonl", pooled_cases(own=False))  # every neighbour a pool text
    spec = {}
    for overlap in (True, False):
        out = run(
            _config(data, tmp_path / f"r{overlap}", folds_overlap=overlap), model, tok, editor=Memoriser()
        )
        summary = json.loads((out / "summary.json").read_text())
        assert summary["counts"]["ok"] == 10
        spec[overlap] = summary["metrics"]["specificity"]["em"]
        assert ("[overlapping folds]" in (out / "table.md").read_text()) == overlap
    assert spec[True] == 100.0  # on the study's split the cheat keeps every neighbour: it was shown them all
    assert spec[False] == 0.0  # probe-disjoint: it was shown none of them


def test_unprobed_inputs_reach_fit_without_any_probe_of_the_test_fold(llama_tiny, tmp_path):
    """The data's unprobed inputs are a user's file: one that lists every probe too (hostile, or built
    from other cases) still gives `fit` none of the test fold's, and the memoriser keeps no neighbour."""
    model, tok = llama_tiny
    cases = pooled_cases(own=False)
    data = write_cases(tmp_path / "c.jsonl", cases)
    extra = [format_prompt("cnle", "strip every line of a file"), format_prompt("cnle", "format a date")]
    write_unprobed(data, [*extra, *sorted(probe_texts(cases))])
    editor = Memoriser()
    out = run(_config(data, tmp_path / "r"), model, tok, editor=editor)
    folds = split_folds(cases, 2, 0)
    assert len(editor.unprobed_on) == 2
    for k, given in enumerate(editor.unprobed_on):
        assert set(extra) <= set(given) and not set(given) & probe_texts(folds[k])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["specificity"]["em"] == 0.0
    assert summary["unprobed_offered"] == {str(k): len(given) for k, given in enumerate(editor.unprobed_on)}


class Recorder(Editor):
    """Records what `_apply` is handed (and changes nothing)."""

    name = "recorder"

    def __init__(self, hparams=None):
        super().__init__(hparams)
        self.got: list[object] = []

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        self.got += cases
        result.info["n"] = len(cases)

    def edited_layers(self, model) -> list[int]:
        return []  # it edits no weight (declared: an undeclared editor cannot save a fix file)


def _only_requests(got: list[object], n: int) -> None:
    assert len(got) == n
    for item in got:
        assert type(item) is EditRequest
        assert not hasattr(item, "rephrase") and not hasattr(item, "neighbours")


def test_apply_never_receives_a_rephrase_or_neighbour(llama_tiny, tmp_path):
    from clmedit.fixes.artifact import save_artifact

    model, tok = llama_tiny
    cases = pooled_cases(4)
    data = write_cases(tmp_path / "c.jsonl", cases)
    editor = Recorder()
    editor.apply(model, tok, [cases[0], cases[1].request()]).restore()  # the boundary, both kinds
    _only_requests(editor.got, 2)

    editor = Recorder()
    run(RunConfig(model="tiny", editor="recorder", data=str(data), out=tmp_path / "r", fluency=False, batch_size=2),
        model, tok, editor=editor)  # fmt: skip
    _only_requests(editor.got, 4)

    editor = Recorder()
    run(RunConfig(model="tiny", editor="recorder", data=str(data), out=tmp_path / "s", fluency=False, sequential=3,
                  checkpoints="3"), model, tok, editor=editor)  # fmt: skip
    _only_requests(editor.got, 3)

    editor = Recorder()  # `clmedit apply` saves fixes this way
    save_artifact(model, tok, editor, cases[:2], tmp_path / "fix", "tiny")
    _only_requests(editor.got, 2)
