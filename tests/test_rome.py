"""ROME on tiny random models: the edited prompt yields the target, only one down_proj moves, restore is exact."""

import pytest
import torch

from clmedit.editors.base import get_editor
from tests.conftest import make_case

# Tiny random models have hidden states of norm ~0.03 and near-uniform logits: let the delta grow.
TINY = dict(clamp_factor=1000.0, weight_decay=0.0, steps=30)


def first_token(model, tok, prompt: str) -> int:
    with torch.no_grad():
        logits = model(**tok(prompt, return_tensors="pt")).logits
    return int(logits[0, -1].argmax())


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: Conv1D weights stored (in, out)
def test_rome_edits_one_weight_and_restores_bitwise(family):
    from clmedit.models.tiny import tiny_model

    model, tok = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # one case: on a random model all keys nearly coincide, and TINY's huge deltas would interfere
    cases = [make_case(0, target="os")]
    result = get_editor("rome", **TINY).apply(model, tok, cases)
    assert result.info["layer"] == 1  # layer 5 of 32 -> 1 of 4
    for case in cases:
        assert first_token(model, tok, case.prompt) == tok(" " + case.target)["input_ids"][0]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all(".1.mlp." in k and ("down_proj" in k or "c_proj" in k) for k in changed)
    result.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_rome_refuses_several_layers(llama_tiny):
    model, tok = llama_tiny
    with pytest.raises(ValueError, match="one layer"):
        get_editor("rome", layers=[4, 5]).apply(model, tok, [make_case(0)])


def test_rome_direction_is_the_key_averaged_over_context_prefixes(llama_tiny):
    """dW = r k_bar^T / (k . k_bar): its row space is k_bar (prompt + 5 generated contexts), or k when off."""
    from clmedit.locate.keys import averaged_keys, compute_keys

    model, tok = llama_tiny
    case = make_case(0, target="os")
    weight = model.model.layers[1].mlp.down_proj.weight
    w0 = weight.detach().clone()
    k = compute_keys(model, tok, [case.prompt], [1])[1][0].double()
    k_bar = averaged_keys(model, tok, [case.prompt], 1, get_editor("rome").prefixes(model, tok))[0].double()
    assert torch.nn.functional.cosine_similarity(k, k_bar, dim=0) < 0.999  # the two directions differ
    for context_keys in (True, False):
        editor = get_editor("rome", **TINY, context_keys=context_keys)
        result = editor.apply(model, tok, [case])
        dw = (weight.detach() - w0).double()
        result.restore()
        prefixes = editor.prefixes(model, tok)
        assert len(prefixes) == (5 if context_keys else 0)
        direction = k_bar if context_keys else k
        u = dw[dw.norm(dim=1).argmax()]  # any nonzero row of a rank-one r u^T is parallel to u
        assert torch.nn.functional.cosine_similarity(u, direction, dim=0).abs() > 0.9999
        assert torch.linalg.matrix_rank(dw.float()) == 1
