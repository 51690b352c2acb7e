"""The fast evaluation path gives the reference's outputs: every family, every editor, both budgets.

Identical means the stripped texts of prompt, rephrase, neighbours and the sampled fluency texts,
case for case, with the same seed.
"""

from __future__ import annotations

import pytest

from clmedit.editors.base import editor_names
from clmedit.eval.decode import CaseDecoder, stateless
from clmedit.eval.generate import generate
from clmedit.eval.protocol import evaluate_case, fill_base_answers
from clmedit.models.text import target_ids
from clmedit.models.tiny import FAMILIES, tiny_model
from tests.conftest import make_case
from tests.test_conformance import ONE_TOKEN_ON_TINY, _editor

EDITORS = [n for n in editor_names() if n != "none"]


def _both(model, tok, case, **kwargs):
    ref = evaluate_case(model, tok, case, seed=7, evaluation="reference", **kwargs)
    fast = evaluate_case(model, tok, case, seed=7, evaluation="fast", **kwargs)
    return ref.outputs, fast.outputs


def _edited_case(editor_name: str, tok):
    target = "sorted(xs, reverse=True)"
    if editor_name in ONE_TOKEN_ON_TINY:  # their tiny-model edits reach one token (test_conformance)
        target = tok.decode(target_ids(tok, make_case(0).prompt, target)[:1]).strip()
    return make_case(0, target=target)


def _assert_same_with_editor(name: str, model, tok) -> None:
    editor = _editor(name)
    if editor.trainable:
        editor.fit(model, tok, [make_case(i) for i in range(2, 6)])
    case = _edited_case(name, tok)
    fill_base_answers(model, tok, [case])
    result = editor.apply(model, tok, [case])
    try:
        ref, fast = _both(model, tok, case)
    finally:
        result.restore()
    assert fast == ref, f"{name}: {fast} != {ref}"
    assert len(ref.fluency) == 2 and len(ref.neighbours) == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_unedited_every_family(family):
    model, tok = tiny_model(family)
    case = make_case(1)
    fill_base_answers(model, tok, [case])
    assert stateless(model)  # the shared prefill is in use
    ref, fast = _both(model, tok, case)
    assert fast == ref
    assert fast.neighbours == [n.answers[f"tiny-{family}"] for n in case.neighbours]


@pytest.mark.parametrize("name", EDITORS)
def test_every_editor_on_llama(name):
    model, tok = tiny_model("llama")
    _assert_same_with_editor(name, model, tok)


@pytest.mark.slow
@pytest.mark.parametrize("name", EDITORS)
def test_every_editor_on_every_family(name, family_model):
    _, model, tok = family_model
    _assert_same_with_editor(name, model, tok)


def test_in_context_budget_and_single_rows():
    """Budgets that differ split prompt and rephrase into two one-row calls; a one-row batch has no mask."""
    model, tok = tiny_model("qwen2")
    case = make_case(3, target="sorted")
    fill_base_answers(model, tok, [case])
    ref, fast = _both(model, tok, case, budget="in-context")
    assert fast == ref
    decoder = CaseDecoder(model, tok)
    for prompt in (case.prompt, case.rephrase):
        assert decoder([prompt], 9) == generate(model, tok, [prompt], 9)
        sampled = decoder([prompt], 20, do_sample=True, top_k=5, seed=3)
        assert sampled == generate(model, tok, [prompt], 20, do_sample=True, top_k=5, seed=3)


def test_one_prefill_serves_greedy_and_fluency(monkeypatch):
    """On a stateless model the [prompt, rephrase] batch is prefilled once: two prefills per case, not three."""
    from clmedit.eval import decode as decode_module

    model, tok = tiny_model("llama")
    case = make_case(2)
    fill_base_answers(model, tok, [case])
    batches = []
    original = decode_module.prefill

    def counting(model, tok, prompts):
        batches.append(len(prompts))
        return original(model, tok, prompts)

    monkeypatch.setattr(decode_module, "prefill", counting)
    ref, fast = _both(model, tok, case)
    assert batches == [2, 5] and fast == ref


def test_hooks_turn_prefill_sharing_off():
    """A forward hook may keep per-generation state (GRACE counts decoded steps): no prefill is reused."""
    model, tok = tiny_model("llama")
    handle = model.model.layers[0].register_forward_hook(lambda *args: None)
    try:
        assert not stateless(model)
    finally:
        handle.remove()
    assert stateless(model)


def test_what_the_loop_does_not_do_runs_the_reference():
    """A checkpoint asking generate for a static cache gets generate's own tokens (bitwise ours would not be)."""
    model, tok = tiny_model("llama")
    model.generation_config.cache_implementation = "static"
    prompts = [make_case(0).prompt, make_case(0).rephrase]
    want = generate(model, tok, prompts, 12, do_sample=True, top_k=5, seed=1)
    assert CaseDecoder(model, tok)(prompts, 12, do_sample=True, top_k=5, seed=1) == want
