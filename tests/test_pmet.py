"""PMET on a tiny random model: attention + FFN targets, only FFN weights change, restore is exact."""

import torch

from clmedit.editors.base import get_editor
from tests.conftest import make_case
from tests.test_locate import CODE
from tests.test_rome import TINY, first_token


def test_pmet_edits_only_ffn_weights(llama_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "c.py").write_text(CODE)
    model, tok = llama_tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = dict(stats_corpus=str(tmp_path / "c.py"), stats_samples=4, stats_seq_len=32)
    editor = get_editor("pmet", **TINY, **stats, mom2_weight=1e-3)
    cases = [make_case(i, target=t) for i, t in enumerate(["os", "return"])]
    result = editor.apply(model, tok, cases)
    for case in cases:
        assert first_token(model, tok, case.prompt) == tok(" " + case.target)["input_ids"][0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.endswith("mlp.down_proj.weight") for k in changed)
    pmet_delta = {k: v - before[k] for k, v in model.state_dict().items() if k in changed}
    result.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the attention share is split off: the FFN update is not MEMIT's under the same settings
    memit = get_editor("memit", **TINY, **stats, mom2_weight=1e-3).apply(model, tok, cases)
    assert any(not torch.allclose(model.state_dict()[k] - before[k], d) for k, d in pmet_delta.items())
    memit.restore()


def test_pmet_spreads_by_sqrt_with_the_dynamic_nll_values(llama_tiny):
    """PMET = its value optimisation (attn + mlp deltas, dynamic NLL) then resid / sqrt(L - i) per layer."""
    from clmedit.locate.solve import spread_over_layers
    from clmedit.locate.values import optimize_values

    model, tok = llama_tiny
    editor = get_editor("pmet", **TINY, mom2_adjustment=False, layers=[0, 1], reference_layers=4)
    assert editor.hparams.dynamic_nll and editor.resid_split == "sqrt"
    assert get_editor("memit").resid_split == "linear" and not get_editor("memit").hparams.dynamic_nll
    case = make_case(0, target="os")
    weights = [model.model.layers[i].mlp.down_proj.weight for i in (0, 1)]
    result = editor.apply(model, tok, [case])
    got = [w.detach().clone() for w in weights]
    result.restore()
    prefixes = editor.prefixes(model, tok)
    values = optimize_values(
        model, tok, [case.prompt], [case.target], [("attn", 1), ("mlp", 1)], editor.hparams.value_params(),
        prefixes,
    )  # fmt: skip
    site = "model.layers.1.mlp"
    spread_over_layers(
        model, tok, [case.prompt], [0, 1], site, values.target(site), {}, editor.hparams.mom2_weight, "sqrt",
        prefixes=prefixes,
    )  # fmt: skip
    assert all(torch.equal(g, w.detach()) for g, w in zip(got, weights))
    result.restore()
