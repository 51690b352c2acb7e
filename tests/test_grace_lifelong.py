"""GRACE-family lifelong editing: applies without restore extend one codebook; restores undo LIFO.

Several sequential applies keep every earlier edit, never nest wrappers, and restoring the
results last-in-first-out walks the codebook back through each earlier state, bitwise, to the
unedited model.
"""

from __future__ import annotations

import pytest
import torch

from clmedit.config import preset_path
from clmedit.editors.base import get_editor
from clmedit.editors.grace.codebook import Codebook
from clmedit.editors.grace.layer import GraceLayer
from clmedit.errors import InputError
from clmedit.models.fingerprint import fingerprint
from clmedit.models.text import target_ids
from tests.conftest import greedy_ids, make_case

TARGETS = ("sorted(xs, reverse=True)", "os.path.join(a, b)", "json.load(f)")


def _book_state(book: Codebook) -> tuple:
    keys = None if book.keys is None else book.keys.clone()
    radii = None if book.radii is None else book.radii.clone()
    return keys, radii, list(book.labels), [v.clone() for v in book.values]


def _same(a: tuple, b: tuple) -> bool:
    (ka, ra, la, va), (kb, rb, lb, vb) = a, b
    tensors = (ka is None and kb is None) or (ka is not None and kb is not None and torch.equal(ka, kb))
    radii = (ra is None and rb is None) or (ra is not None and rb is not None and torch.equal(ra, rb))
    return tensors and radii and la == lb and len(va) == len(vb) and all(map(torch.equal, va, vb))


def test_codebook_rollback_is_exact_and_last_in_first_out():
    """Adds, expansions (radius and moving key), splits and retrained values all roll back bitwise."""
    gen = torch.Generator().manual_seed(0)
    for expand in ("coverage", "moving_average"):
        book = Codebook(eps_init=1.0, expand=expand)
        states, changes = [_book_state(book)], []
        for step in range(6):
            change = book.checkpoint()
            for j in range(3):
                key = torch.randn(4, generator=gen) * 0.8  # close enough to expand and split
                ins = book.insert(
                    key, f"label-{(step + j) % 3}", torch.randn(2, 3, generator=gen), change=change
                )
                book.set_value(ins.index, torch.randn(2, 3, generator=gen), change)
            changes.append(change)
            states.append(_book_state(book))
        ops = {len(c.old) for c in changes}
        assert ops != {0}, "the sequence never changed an existing entry; the test would prove nothing"
        with pytest.raises(RuntimeError, match="last-in-first-out"):
            book.rollback(changes[0])
        for change in reversed(changes):
            states.pop()
            book.rollback(change)
            assert _same(_book_state(book), states[-1])
        assert len(book) == 0 and book.keys is None


@pytest.mark.parametrize("name", ["grace", "agrace-no-cl"])
def test_sequential_applies_extend_one_wrapper_and_restore_lifo(name, llama_tiny):
    model, tok = llama_tiny
    editor = get_editor(name, preset=str(preset_path(name, "tiny")))
    cases = [make_case(i, target=t) for i, t in enumerate(TARGETS)]
    other = make_case(5)
    original = fingerprint(model)
    tree = [(n, type(m).__name__) for n, m in model.named_modules()]
    before_other = greedy_ids(model, tok, other.prompt, 8)
    results, books = [], []
    for k, case in enumerate(cases):
        results.append(editor.apply(model, tok, [case]))
        wrappers = [m for m in model.modules() if isinstance(m, GraceLayer)]
        assert len(wrappers) == 1 and not isinstance(wrappers[0].inner, GraceLayer)  # never nested
        assert len(wrappers[0].codebook) == k + 1 and results[-1].info["continued"] == (k > 0)
        books.append(_book_state(wrappers[0].codebook))
        for done in cases[: k + 1]:  # every earlier edit is kept
            want = target_ids(tok, done.prompt, done.target)
            assert greedy_ids(model, tok, done.prompt, len(want)) == want
        assert greedy_ids(model, tok, other.prompt, 8) == before_other
    with pytest.raises(RuntimeError, match="last-in-first-out"):
        results[1].restore()  # out of order: refused, nothing changed
    assert _same(_book_state(wrappers[0].codebook), books[-1])
    for k in reversed(range(1, len(cases))):
        results[k].restore()
        assert _same(_book_state(wrappers[0].codebook), books[k - 1])
        want = target_ids(tok, cases[0].prompt, cases[0].target)
        assert greedy_ids(model, tok, cases[0].prompt, len(want)) == want
    results[0].restore()
    assert fingerprint(model) == original
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == tree
    assert model._forward_pre_hooks == {}


def test_another_editor_instance_is_refused_not_nested(llama_tiny):
    model, tok = llama_tiny
    first = get_editor("grace", preset=str(preset_path("grace", "tiny")))
    result = first.apply(model, tok, [make_case(0)])
    second = get_editor("grace", preset=str(preset_path("grace", "tiny")))
    with pytest.raises(InputError, match="another editor instance"):
        second.apply(model, tok, [make_case(1)])
    assert sum(isinstance(m, GraceLayer) for m in model.modules()) == 1
    result.restore()
