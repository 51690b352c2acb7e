"""AlphaEdit: the projected solve against its closed form, and the editor on a tiny model
(edit, preserved keys untouched, sequential edits kept through the prior, restore bitwise)."""

import torch

from clmedit.editors.base import get_editor
from clmedit.locate.solve import null_space_projector, projected_update
from clmedit.locate.stats import layer_stats
from tests.conftest import make_case
from tests.test_locate import CODE
from tests.test_rome import TINY, first_token


def _cov_with_null_space(d: int, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """C = U diag(s) U^T with `rank` eigenvalues in [1, 2] and the rest 1e-6; returns (C, U)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.full((d,), 1e-6, dtype=torch.float64)
    s[:rank] = 1 + torch.rand(rank, generator=g, dtype=torch.float64)
    return u @ torch.diag(s) @ u.T, u


def test_projector_spans_exactly_the_small_eigenvalues():
    cov, u = _cov_with_null_space(8, rank=5)
    p = null_space_projector(cov, threshold=1e-2)
    assert torch.allclose(p, u[:, 5:] @ u[:, 5:].T, atol=1e-10)
    assert torch.allclose(p @ p, p, atol=1e-10)  # a projector
    assert round(float(p.trace())) == 3


def test_projected_update_spares_preserved_keys_and_writes_null_space_keys():
    cov, u = _cov_with_null_space(8, rank=5)
    p = null_space_projector(cov, threshold=1e-2)
    keys = (u[:, 5:] @ torch.randn(3, 2, dtype=torch.float64)).T  # (2, 8): keys inside the null space
    resid = torch.randn(2, 4, dtype=torch.float64)
    delta = projected_update(keys, resid, p, l2=1e-8)  # (4, 8)
    assert delta.shape == (4, 8)
    preserved = u[:, :5]  # (8, 5): the directions C is made of
    assert (delta @ preserved).norm() < 1e-6 * delta.norm()  # their outputs do not move
    assert torch.allclose(keys @ delta.T, resid, atol=1e-5)  # the new keys reach their residuals


def test_projected_update_with_prior_keeps_earlier_keys():
    cov, u = _cov_with_null_space(8, rank=3)
    p = null_space_projector(cov, threshold=1e-2)
    g = torch.Generator().manual_seed(1)
    null = u[:, 3:]
    old = (null @ torch.randn(5, 1, generator=g, dtype=torch.float64)).T  # an earlier edit's key
    new = (null @ torch.randn(5, 1, generator=g, dtype=torch.float64)).T
    resid = torch.randn(1, 4, generator=g, dtype=torch.float64)
    plain = projected_update(new, resid, p, l2=1e-6)
    kept = projected_update(new, resid, p, prior=old.T @ old, l2=1e-6)
    # the prior makes the new update leave the old key's output (almost) alone
    assert (old @ kept.T).norm() < 0.05 * (old @ plain.T).norm()


def _alphaedit(tmp_path, monkeypatch, **hp):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "c.py").write_text(CODE)
    stats = dict(stats_corpus=str(tmp_path / "c.py"), stats_samples=4, stats_seq_len=32)
    return get_editor("alphaedit", **TINY, **stats, **hp), stats


def test_alphaedit_edits_inside_the_null_space_and_restores(llama_tiny, tmp_path, monkeypatch):
    model, tok = llama_tiny
    # layer 1 statistics of the tiny corpus
    probe, stats = _alphaedit(tmp_path, monkeypatch)
    cov = layer_stats(model, tok, [1], stats["stats_corpus"], 4, 32)[1].double()
    evals = torch.linalg.eigvalsh(cov)
    q = 3 * len(evals) // 4  # the top quarter of directions is preserved; the threshold lies between
    threshold = float(evals[q - 1] + evals[q]) / 2  # two eigenvalues, so no rounding moves one across
    editor, _ = _alphaedit(tmp_path, monkeypatch, layers=[1], reference_layers=4,
                           nullspace_threshold=threshold, l2=1e-4)  # fmt: skip
    weight = model.model.layers[1].mlp.down_proj.weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    case = make_case(0, target="os")
    result = editor.apply(model, tok, [case])
    assert first_token(model, tok, case.prompt) == tok(" " + case.target)["input_ids"][0]
    delta = (weight.detach() - before["model.layers.1.mlp.down_proj.weight"]).double()
    evecs = torch.linalg.eigh(cov).eigenvectors
    preserved = evecs[:, evals >= threshold]
    assert (delta @ preserved).norm() < 1e-3 * delta.norm()  # the corpus keys' directions are spared
    assert result.info["nullspace_dims"][1] == int((evals < threshold).sum())
    result.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not editor._prior  # the restored edit's keys left the prior


def test_alphaedit_sequential_edits_accumulate_and_restore_in_order(llama_tiny, tmp_path, monkeypatch):
    model, tok = llama_tiny
    editor, _ = _alphaedit(tmp_path, monkeypatch, layers=[1], reference_layers=4,
                           nullspace_threshold=1e3, l2=1e-4)  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = editor.apply(model, tok, [make_case(0, target="os")])
    prior_after_first = next(iter(editor._prior.values())).clone()
    second = editor.apply(model, tok, [make_case(1, target="return")])
    assert not torch.equal(next(iter(editor._prior.values())), prior_after_first)  # the prior grew
    second.restore()
    assert torch.equal(next(iter(editor._prior.values())), prior_after_first)
    first.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not editor._prior


def test_study_yaml_keys_translate(tmp_path):
    from clmedit.editors.alphaedit import AlphaEditHParams

    path = tmp_path / "AlphaEdit.yaml"
    path.write_text("alg_name: AlphaEdit\nlayers: [4, 5]\nL2: 5\nnullspace_threshold: 0.1\nv_lr: 0.2\n")
    hp = AlphaEditHParams.from_yaml(path)
    assert (hp.l2, hp.nullspace_threshold, hp.lr, hp.layers) == (5.0, 0.1, 0.2, [4, 5])
