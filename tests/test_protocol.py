"""The study's protocol on a tiny model: references, call count, summaries, errors."""

from __future__ import annotations

import pytest
import torch

from clmedit.eval.generate import generate
from clmedit.eval.protocol import CaseScores, evaluate_case, fill_base_answers, summarise
from clmedit.models.text import generation_budget
from clmedit.models.tiny import tiny_model
from tests.conftest import make_case


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


def _word_only_model():
    """A tiny model whose greedy output is whole words: only ' word' tokens keep unembedding rows.

    A random tiny model mostly emits byte fragments, which do not survive decode -> re-encode; with
    every other logit pinned at 0 its output re-tokenizes to the same tokens, so it can be a target.
    """
    model, tok = tiny_model("llama")
    words = [i for s, i in tok.get_vocab().items() if s.startswith("\u0120") and s[1:].isalpha()]
    keep = torch.zeros(model.lm_head.weight.shape[0], 1)
    keep[words] = 1.0
    with torch.no_grad():
        model.lm_head.weight.mul_(keep)
    return model, tok


def test_unedited_model_is_its_own_reference(tiny):
    model, tok = tiny
    cases = [make_case(i) for i in range(2)]
    assert fill_base_answers(model, tok, cases) == 10
    assert fill_base_answers(model, tok, cases) == 0  # already there: nothing recomputed
    assert all(n.answers["tiny-llama"] == n.answers["tiny-llama"].strip() for n in cases[0].neighbours)
    scores = evaluate_case(model, tok, cases[0], fluency=False)
    assert scores.specificity.em == 1.0
    assert scores.outputs.neighbours == [n.answers["tiny-llama"] for n in cases[0].neighbours]
    assert scores.fluency is None


def test_own_greedy_output_as_target_is_effective():
    model, tok = _word_only_model()
    case = make_case(0)
    case.target = generate(model, tok, [case.prompt], 4)[0].strip()
    assert generation_budget(tok, case.target) == 4  # the protocol will ask for exactly 4 tokens
    fill_base_answers(model, tok, [case])
    scores = evaluate_case(model, tok, case, fluency=False)
    assert scores.effectiveness.em == 1.0
    assert scores.outputs.prompt == case.target
    assert scores.effectiveness.rouge_l == pytest.approx(1.0)


def test_three_generate_calls_and_seeded_fluency(tiny, monkeypatch):
    model, tok = tiny
    case = make_case(1)
    fill_base_answers(model, tok, [case])
    calls = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    scores = evaluate_case(model, tok, case, seed=3, evaluation="reference")
    assert calls == [2, 5, 2]  # prompt+rephrase, the five neighbours, fluency
    monkeypatch.undo()
    sampled = generate(model, tok, [case.prompt, case.rephrase], 64, do_sample=True, top_k=5, seed=3)
    assert scores.outputs.fluency == [s.strip() for s in sampled]  # top-k 5, 64 tokens, the given seed
    assert scores.fluency is not None and scores.fluency >= 0
    assert all(o == o.strip() for o in [scores.outputs.prompt, scores.outputs.rephrase])


def test_missing_answers_are_a_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(KeyError, match="fill_base_answers"):
        evaluate_case(model, tok, make_case(2), model_name="some-other-model")


def test_summarise_is_means_times_100_and_records_round_trip(tiny):
    model, tok = tiny
    cases = [make_case(i) for i in range(2)]
    fill_base_answers(model, tok, cases)
    scores = [evaluate_case(model, tok, c, fluency=False) for c in cases]
    scores[0].effectiveness.em, scores[1].effectiveness.em = 1.0, 0.0
    scores[0].fluency, scores[1].fluency = 2.0, None
    summary = summarise(scores)
    assert summary["n"] == 2
    assert summary["effectiveness"]["em"] == pytest.approx(50.0)
    assert summary["specificity"]["em"] == pytest.approx(100.0)
    assert summary["fluency"] == pytest.approx(200.0)  # cases without fluency are left out
    # the runner stores scores and outputs apart and rebuilds CaseScores from them
    dumped = scores[0].model_dump(mode="json")
    outputs = dumped.pop("outputs")
    assert CaseScores.model_validate({**dumped, "outputs": outputs}) == scores[0]
    assert CaseScores.model_validate({**dumped, "outputs": {}}).outputs.prompt == ""
    with pytest.raises(ValueError):
        summarise([])


def _alone_shorter_than_in_context(tok) -> str:
    """A word that is one token alone but more after the prompt (where it follows a space)."""
    for piece in sorted(tok.get_vocab()):
        alone, after = (len(tok(t, add_special_tokens=False)["input_ids"]) for t in (piece, " " + piece))
        if piece.isalpha() and alone == 1 < after:
            return piece
    raise AssertionError("the tiny vocabulary has no such word")


def test_study_budget_short_cases_are_counted_and_in_context_budget_fits(tiny):
    from clmedit.models.text import in_context_budget
    from clmedit.results import CaseRecord
    from clmedit.run.summary import summarise_records

    model, tok = tiny
    case = make_case(3, target=_alone_shorter_than_in_context(tok))
    fill_base_answers(model, tok, [case])
    need = in_context_budget(tok, case.prompt, case.target)
    assert generation_budget(tok, case.target) == 1 < need
    study = evaluate_case(model, tok, case, fluency=False)
    assert study.budget_short == ["effectiveness", "generalization"]  # EM cannot be 1 on either
    assert study.outputs.prompt == generate(model, tok, [case.prompt], 1)[0].strip()
    fitted = evaluate_case(model, tok, case, fluency=False, budget="in-context")
    assert fitted.budget_short == []
    assert fitted.outputs.prompt == generate(model, tok, [case.prompt], need)[0].strip()
    ok = make_case(4)  # its target is 11 tokens alone, 10 after the prompt: the budget fits
    fill_base_answers(model, tok, [ok])
    recs = []
    for c, s in ((case, study), (ok, evaluate_case(model, tok, ok, fluency=False))):
        recs.append(CaseRecord(case_id=c.case_id, task=c.task, scores=s))
    assert summarise_records(recs)["counts"]["budget_short"] == 1
