"""MALMEN: the joint least-squares solve, pair extraction, meta-training, apply/restore, save/load."""

from __future__ import annotations

import torch

from clmedit.editors.malmen.editor import Malmen, MalmenHParams
from clmedit.editors.malmen.hypernet import load_hypernet, ridge_solve, save_hypernet
from clmedit.editors.malmen.pairs import key_grad_pairs
from clmedit.editors.malmen.train import TrainingData
from clmedit.models.arch import arch_of
from tests.conftest import make_case


def _lstsq_reference(keys, values, lam):
    """min ||S u_i - v_i||^2 + lam ||S||^2 as a plain least-squares problem: [U; sqrt(lam) I] S^T = [V; 0]."""
    d_in = keys.size(1)
    a = torch.cat([keys, lam**0.5 * torch.eye(d_in, dtype=keys.dtype)])
    b = torch.cat([values, torch.zeros(d_in, values.size(1), dtype=values.dtype)])
    return torch.linalg.lstsq(a, b).solution.T


def test_ridge_solve_equals_direct_least_squares():
    g = torch.Generator().manual_seed(0)
    for n in (5, 40):  # dual (n < d_in) and primal (n >= d_in) branches
        keys = torch.randn(n, 16, generator=g, dtype=torch.float64)
        values = torch.randn(n, 8, generator=g, dtype=torch.float64)
        for lam in (1e-3, 0.7):
            got = ridge_solve(keys, values, lam)
            assert got.shape == (8, 16)
            assert torch.allclose(got, _lstsq_reference(keys, values, lam), atol=1e-8)


def test_pairs_grads_give_the_weight_gradient(llama_tiny):
    """sum_t g_t u_t^T of the pairs equals autograd's dL/dW of the down_proj."""
    model, tok = llama_tiny
    cases = [make_case(0), make_case(1, target="os.path.join(a, b)")]
    pairs = key_grad_pairs(model, tok, cases, [2], batch_size=2, tokens="all")
    assert pairs.owner.tolist().count(0) > 0 and pairs.owner.tolist().count(1) > 0
    weight = arch_of(model).down_proj_module(model, 2).weight
    from clmedit.models.text import IGNORE, edit_batch

    total = 0.0
    for c in cases:  # the pair loss is the sum over cases of each case's mean target NLL
        b = edit_batch(tok, [c.prompt], [c.target])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        total = total + torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE
        )
    (grad,) = torch.autograd.grad(total, [weight])
    assert torch.allclose(pairs.grads[2].T @ pairs.keys[2], grad, atol=1e-5)


def test_fit_apply_restore_bitwise_and_save_load(llama_tiny, tmp_path):
    model, tok = llama_tiny
    train = [make_case(i) for i in range(6)]
    editor = Malmen(MalmenHParams(steps=6, batch_size=2, val_every=3, init_lr=1e-2, meta_lr=1e-3))
    history = editor.fit(model, tok, train)
    assert len(history["train"]) == 6 and all(torch.isfinite(torch.tensor(history["train"])))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = editor.apply(model, tok, [make_case(7), make_case(8, target="json.load(f)")])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("down_proj" in k for k in changed)
    result.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # a saved and reloaded hypernetwork makes exactly the same edit
    editor.save(tmp_path / "net")
    again = Malmen(MalmenHParams(hypernet_dir=str(tmp_path / "net")))
    r1 = editor.apply(model, tok, [make_case(7)])
    w1 = {k: v.clone() for k, v in model.state_dict().items()}
    r1.restore()
    r2 = again.apply(model, tok, [make_case(7)])
    assert all(torch.equal(v, w1[k]) for k, v in model.state_dict().items())
    r2.restore()
    net, extra = load_hypernet(save_hypernet(editor.net, tmp_path / "n2", {"layers": [1]}))
    assert extra["layers"] == [1]


def test_a_fit_does_not_depend_on_the_global_random_state(llama_tiny):
    """A fold trained in another process (a Ray worker, `clmedit train`) is the one a run trains itself."""
    model, tok = llama_tiny
    train = [make_case(i) for i in range(4)]
    nets = []
    for state in (1, 2):
        torch.manual_seed(state)  # what earlier work in the process left behind
        editor = Malmen(MalmenHParams(steps=1, batch_size=2, val_every=1))
        editor.fit(model, tok, train)
        nets.append(editor.net.state_dict())
    assert all(torch.equal(v, nets[1][k]) for k, v in nets[0].items())


def test_step_size_calibration_picks_the_grid_minimum_on_training_cases(llama_tiny):
    model, tok = llama_tiny
    train = [make_case(i) for i in range(6)]
    editor = Malmen(MalmenHParams(steps=1, batch_size=2, val_every=1, init_lr=1e-3, scale_lr=1e-9))
    history = editor.fit(model, tok, train)
    grid = history["init_lr_grid"]
    assert len(grid) == 7 and min(grid) < 1e-3 < max(grid)
    best = min(grid, key=grid.get)
    # one training step at a negligible scale lr leaves every layer's eta at the calibrated value
    assert torch.allclose(editor.net.log_lr.exp(), torch.full_like(editor.net.log_lr, best), rtol=1e-4)


def test_meta_training_lowers_the_held_out_meta_loss(llama_tiny):
    """Meta-training must make the net's edits better: the post-edit loss on the validation split
    of the training cases (never trained on) falls below its value before the first step."""
    model, tok = llama_tiny
    targets = ["sorted(xs)", "os.path.join(a, b)", "json.load(f)", "len(x)"]
    train = [make_case(i, target=t) for i, t in enumerate(targets * 3)]
    hp = MalmenHParams(
        steps=30, batch_size=4, val_every=10, val_fraction=0.25, calibrate_lr=False,
        init_lr=1e-2, meta_lr=1e-2, scale_lr=0.1,
    )  # fmt: skip
    history = Malmen(hp).fit(model, tok, train)
    assert history["val_best"] < history["val_start"] - 0.1
    first, last = history["train"][:5], history["train"][-5:]
    assert sum(last) / 5 < sum(first) / 5 - 0.1
def test_streamed_training_equals_training_on_the_device(llama_tiny, tmp_path, monkeypatch):
    """Pairs and hidden states kept on disk or in host memory give the same net as on the device,
    and the streamed feature statistics equal the ones of all training pairs at once."""
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path))
    model, tok = llama_tiny
    train = [make_case(i, target=t) for i, t in enumerate(["sorted(xs)", "json.load(f)", "x + 1"] * 3)]
    nets = {}
    for store in ("device", "cpu", "disk"):
        torch.manual_seed(0)  # the net's initialisation
        hp = MalmenHParams(steps=4, batch_size=2, val_every=2, init_lr=1e-2, meta_lr=1e-3, store=store)
        editor = Malmen(hp)
        history = editor.fit(model, tok, train)
        nets[store] = (editor.net.state_dict(), history["train"])
    assert not any((tmp_path / "tmp").iterdir())  # the disk store removes its files
    for store in ("cpu", "disk"):
        assert nets[store][1] == nets["device"][1]
        assert all(torch.equal(v, nets["device"][0][k]) for k, v in nets[store][0].items())
    layers = [2, 3]
    data = TrainingData(model, tok, train, layers, MalmenHParams(store="disk"), stats_cases=list(range(9)))
    pairs = key_grad_pairs(model, tok, train, layers)
    streamed, ref = Malmen().new_net(model), Malmen().new_net(model)
    for i, layer in enumerate(layers):
        streamed.set_moments(i, *data.moments[layer])
        ref.set_stats(i, pairs.keys[layer], pairs.grads[layer])
    got, seqs = data.batch([1, 4])
    want = pairs.select([1, 4])
    assert torch.equal(got.owner, want.owner) and len(seqs) == 2 and len(seqs[0]["edit"]) == 2
    assert all(torch.equal(got.keys[l_], want.keys[l_]) and torch.equal(got.grads[l_], want.grads[l_]) for l_ in layers)
    data.store.close()
    assert torch.allclose(streamed.mean, ref.mean, atol=1e-6)
    assert torch.allclose(streamed.std, ref.std, rtol=1e-5)
