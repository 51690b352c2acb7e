"""UltraEdit's lifelong claims on the tiny llama: each edit of a stream moves its own target, earlier
edits stay in, the editor keeps a fixed-size state however long the stream, and a fix file carries
that state so a stream continued after loading it is bitwise the stream that never stopped."""

from __future__ import annotations

import torch

from clmedit.editors.base import get_editor
from clmedit.editors.malmen.pairs import key_grad_pairs
from clmedit.editors.session import EditSession
from clmedit.models.fingerprint import fingerprint
from clmedit.models.text import edit_batch, target_nll
from clmedit.models.tiny import tiny_model
from tests.conftest import make_case

TARGETS = ["sorted(xs, reverse=True)", "json.load(f)", "os.path.join(a, b)", "print(x)", "return len(s)"]
# the paper's normalisation (centred) on three of the four layers, a step sized for a random model
HP = {"reference_layers": 4, "layers": [1, 2, 3], "lr": 0.1, "center": True}


def _nll(model, tok, case) -> float:
    batch = edit_batch(tok, [case.prompt], [case.target])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(target_nll(logits, batch["labels"]))


def test_a_stream_of_edits_moves_each_target_keeps_earlier_ones_and_a_fixed_size_state():
    model, tok = tiny_model("llama")
    editor = get_editor("ultraedit", **HP)
    cases = [make_case(i, target=t) for i, t in enumerate(TARGETS)]
    base = [_nll(model, tok, c) for c in cases]
    pairs = sum(int(key_grad_pairs(model, tok, [c], [1]).owner.numel()) for c in cases)  # target tokens
    session, right_after, widths = EditSession(), [], set()
    before = fingerprint(model)
    for case in cases:
        session.absorb(editor.apply(model, tok, [case]))
        right_after.append(_nll(model, tok, case))
        widths.add(tuple(editor.sums[1].shape))
    end = [_nll(model, tok, c) for c in cases]
    assert all(a < b - 0.1 for a, b in zip(right_after, base)), (base, right_after)  # each edit moves its target
    assert all(e < b - 0.1 for e, b in zip(end, base)), (base, end)  # and is still in after the later ones
    # the lifelong state: three running sums of one fixed width, over every (key, gradient) row so far
    assert widths == {(model.config.intermediate_size + model.config.hidden_size,)}
    assert int(editor.sums[0]) == pairs * len(HP["layers"])
    session.restore()
    assert fingerprint(model) == before and editor.sums is None


def test_a_fix_file_carries_the_lifelong_statistics_so_the_stream_goes_on_unchanged():
    cases = [make_case(i, target=t) for i, t in enumerate(TARGETS[:4])]
    model, tok = tiny_model("llama")
    editor = get_editor("ultraedit", **HP)
    for case in cases:  # the stream that never stopped
        editor.apply(model, tok, [case])
    state_then = editor.edit_state(model)

    resumed, tok2 = tiny_model("llama")
    saved_editor = get_editor("ultraedit", **HP)
    for case in cases[:3]:
        saved_editor.apply(resumed, tok2, [case])
    state = saved_editor.edit_state(resumed)
    assert {"norm.count", "norm.total", "norm.total_sq"} <= state.tensors.keys()
    fresh, tok3 = tiny_model("llama")
    loader = get_editor("ultraedit", **HP)
    unedited = fingerprint(fresh)
    loaded = loader.load_edit(fresh, tok3, state)
    assert int(loader.sums[0]) == int(saved_editor.sums[0])
    fourth = loader.apply(fresh, tok3, [cases[3]])  # the fourth fix, added to the loaded three
    now = loader.edit_state(fresh)
    assert now.tensors.keys() == state_then.tensors.keys()
    assert all(torch.equal(now.tensors[k], state_then.tensors[k]) for k in now.tensors)
    fourth.restore()
    loaded.restore()  # the load's undo takes the weights and the statistics out again
    assert fingerprint(fresh) == unedited and loader.sums is None
