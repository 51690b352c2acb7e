"""The parts of the editor contract beyond apply/restore (tests/test_conformance.py):

- a failure inside `apply` leaves the model bitwise as it was, for every editor (MALMEN explicitly);
- `prepare` runs outside the timed apply, and `apply` calls it when nobody did;
- `key_record` gives the keys and distances the report plots (None for editors without keys);
- `save`/`load` raise NotSavableError when there is nothing trained to save.
"""

from __future__ import annotations

import time

import pytest
import torch

from clmedit.config import preset_path
from clmedit.editors.base import editor_class, editor_names, get_editor
from clmedit.editors.none import NoEdit
from clmedit.errors import NotSavableError
from clmedit.models.arch import arch_of
from tests.conftest import make_case
from tests.test_conformance import _editor

# MALMEN and UltraEdit shift their layers after their last forward pass: their own injection below
FORWARD_AFTER_CHANGE = [n for n in editor_names() if n not in ("none", "malmen", "ultraedit")]


class Injected(RuntimeError):
    """The fault the tests inject."""


def _snapshot(model) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}, [
        (n, type(m).__name__) for n, m in model.named_modules()
    ]


def _differs(model, snap) -> bool:
    params, tree = snap
    if [(n, type(m).__name__) for n, m in model.named_modules()] != tree:
        return True
    return any(not torch.equal(p.detach(), params[n]) for n, p in model.named_parameters())


def _assert_bitwise(model, snap) -> None:
    params, tree = snap
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == tree
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), params[n])]
    assert not changed, f"left changed after a failed apply: {changed[:5]}"


class FailOnCall:
    """Forward hooks on every module: count the calls, raise `Injected` at call number `at`."""

    def __init__(self, model, at: int | None = None, snap=None):
        self.calls, self.at, self.changed_when_raised = 0, at, None
        self.model, self.snap = model, snap
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules()]

    def hook(self, module, args, out):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            self.changed_when_raised = _differs(self.model, self.snap)
            raise Injected(f"fault injected at forward call {self.at}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("name", FORWARD_AFTER_CHANGE)
def test_a_failure_mid_apply_undoes_everything(name, llama_tiny, tmp_path, monkeypatch):
    """Fail at the last forward pass of a real apply (by then the editor has changed the model)."""
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path))
    model, tok = llama_tiny
    editor = _editor(name)
    if editor.trainable:
        editor.fit(model, tok, [make_case(i) for i in range(2, 6)])
    editor.prepare(model, tok)
    cases = [make_case(0, target="os"), make_case(1, target="for")]
    snap = _snapshot(model)
    torch.manual_seed(0)
    with FailOnCall(model) as count:
        editor.apply(model, tok, cases).restore()
    _assert_bitwise(model, snap)

    torch.manual_seed(0)
    with FailOnCall(model, at=count.calls, snap=snap) as fault, pytest.raises(Injected):
        editor.apply(model, tok, cases)
    assert fault.changed_when_raised, f"{name}: the fault came before any change; the test proves nothing"
    _assert_bitwise(model, snap)


@pytest.mark.parametrize("name", ["malmen", "ultraedit"])
def test_failure_in_the_layer_loop_leaves_no_layer_changed(name, llama_tiny, monkeypatch):
    """The last edited layer's in-place add fails after the earlier layers were shifted (MALMEN,
    UltraEdit); UltraEdit's lifelong statistics are put back too."""
    model, tok = llama_tiny
    tiny = str(preset_path(name, "tiny"))
    editor = get_editor(name, preset=tiny, layers=[1, 2, 3], reference_layers=4)
    if editor.trainable:
        editor.fit(model, tok, [make_case(i) for i in range(2, 6)])
    arch = arch_of(model)
    layers = editor.edited_layers(model)
    assert layers == [1, 2, 3]
    last = arch.weight_out_in(arch.down_proj_module(model, layers[-1]))
    snap = _snapshot(model)
    seen = {}
    add_ = torch.Tensor.add_

    def failing_add_(self, *args, **kwargs):
        if self.data_ptr() == last.data_ptr():
            seen["changed"] = _differs(model, snap)
            raise Injected("fault injected in the per-layer loop")
        return add_(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "add_", failing_add_)
    with pytest.raises(Injected):
        editor.apply(model, tok, [make_case(0), make_case(1, target="json.load(f)")])
    monkeypatch.undo()
    assert seen["changed"], "the earlier layers must have been shifted when the fault came"
    _assert_bitwise(model, snap)
    assert getattr(editor, "sums", None) is None  # UltraEdit: no rows of the failed edit are kept


class SlowPrepare(NoEdit):
    """The no-edit baseline with a slow one-off preparation, to see where its cost goes."""

    name = "slow-prepare"

    def __init__(self, hparams=None):
        super().__init__(hparams)
        self.events: list[str] = []

    def prepare(self, model, tok) -> None:
        self.events.append("prepare")
        if self.events.count("prepare") == 1:
            time.sleep(0.3)

    def _apply(self, model, tok, cases, result) -> None:
        self.events.append("apply")


def test_prepare_runs_before_and_outside_the_timed_apply(llama_tiny):
    model, tok = llama_tiny
    editor = SlowPrepare()
    result = editor.apply(model, tok, [make_case(0)])  # nobody called prepare: apply does
    assert editor.events == ["prepare", "apply"]
    assert result.seconds < 0.3  # the preparation is not part of the edit's cost


def test_memit_lazy_and_explicit_prepare_give_the_same_edit(llama_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path))
    model, tok = llama_tiny
    deltas = []
    for explicit in (True, False):
        editor = _editor("memit")
        if explicit:
            editor.prepare(model, tok)
        w0 = [p.detach().clone() for p in model.parameters()]
        result = editor.apply(model, tok, [make_case(0, target="os")])
        deltas.append([p.detach() - w for p, w in zip(model.parameters(), w0)])
        result.restore()
    assert any(d.abs().sum() > 0 for d in deltas[0])
    assert all(torch.equal(a, b) for a, b in zip(*deltas))


def test_grace_key_record_measures_in_the_codebooks_metric(llama_tiny):
    model, tok = llama_tiny
    case = make_case(0)
    for dist_fn in ("euc", "cos"):
        editor = get_editor("grace", eps=0.01, n_iter=2, dist_fn=dist_fn)
        rec = editor.key_record(model, tok, case)
        keys = editor.prompt_keys(model, tok, [case.prompt, case.rephrase, case.neighbours[0].prompt]).float()
        if dist_fn == "euc":
            want = (keys[1:] - keys[0]).norm(dim=-1)
        else:
            want = 1 - torch.nn.functional.cosine_similarity(keys[1:], keys[:1], dim=-1)
        assert rec["distances"]["rephrase"] == pytest.approx(float(want[0]), rel=1e-4)
        assert rec["distances"]["neighbours"][0] == pytest.approx(float(want[1]), rel=1e-4)
        assert len(rec["distances"]["neighbours"]) == len(case.neighbours) == len(rec["keys"]["neighbours"])
        assert rec["distances"]["radius"] == 0.01
        # the recorded prompt key is the key the codebook stores when the case is edited
        result = editor.apply(model, tok, [case])
        assert torch.allclose(torch.tensor(rec["keys"]["prompt"]), result.info["keys"][0].float(), rtol=1e-3)
        result.restore()


def test_editors_without_keys_record_none(llama_tiny):
    model, tok = llama_tiny
    assert get_editor("ft").key_record(model, tok, make_case(0)) is None
    assert get_editor("none").key_record(model, tok, make_case(0)) is None


@pytest.mark.parametrize("name", [n for n in editor_names() if not editor_class(n).trainable])
def test_untrained_editors_cannot_save_or_load(name, tmp_path):
    editor = get_editor(name)
    with pytest.raises(NotSavableError, match="no trained part"):
        editor.save(tmp_path / "x")
    with pytest.raises(NotSavableError, match="no trained part"):
        editor.load(tmp_path / "x")
    assert not (tmp_path / "x").exists()
