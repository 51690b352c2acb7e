"""locate/: the closed forms against direct solves, keys, and the cached covariance statistics."""

import pytest
import torch

from clmedit.locate.keys import compute_keys
from clmedit.locate.solve import least_squares_update, rank_one_update
from clmedit.locate.stats import corpus_fingerprint, layer_stats, stats_path, token_windows
from clmedit.models.fingerprint import model_fingerprint
from clmedit.models.hooks import Trace

CODE = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i)\n" * 8


def _spd(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (2 * d)


def test_rank_one_update_is_the_constrained_least_squares_solution():
    torch.manual_seed(0)
    d_out, d_in = 5, 4
    w, k = torch.randn(d_out, d_in, dtype=torch.float64), torch.randn(d_in, dtype=torch.float64)
    v = torch.randn(d_out, dtype=torch.float64)
    for cov in (None, _spd(d_in)):
        c = torch.eye(d_in, dtype=torch.float64) if cov is None else cov
        # Direct: each row minimises dw^T C dw s.t. dw . k = r_j; KKT [[2C, k], [k^T, 0]] [dw; mu] = [0; r_j]
        kkt = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
        kkt[:d_in, :d_in], kkt[:d_in, d_in], kkt[d_in, :d_in] = 2 * c, k, k
        rhs = torch.zeros(d_in + 1, d_out, dtype=torch.float64)
        rhs[d_in] = v - w @ k
        direct = torch.linalg.solve(kkt, rhs)[:d_in].T
        ours = rank_one_update(k, v - w @ k, cov)
        assert torch.allclose(ours, direct, atol=1e-10)
        assert torch.allclose((w + ours) @ k, v, atol=1e-10)


def test_least_squares_update_matches_lstsq_and_rome_direction():
    torch.manual_seed(1)
    n, d_in, d_out, lam = 3, 6, 4, 7.0
    keys, resid = torch.randn(n, d_in, dtype=torch.float64), torch.randn(n, d_out, dtype=torch.float64)
    cov = _spd(d_in, 1)
    # min ||K dW^T - R||^2 + lam ||dW C^1/2||^2  ==  lstsq of [K; sqrt(lam) C^1/2^T] dW^T = [R; 0]
    half = torch.linalg.cholesky(cov)  # C = half half^T
    a = torch.cat([keys, lam**0.5 * half.T])
    b = torch.cat([resid, torch.zeros(d_in, d_out, dtype=torch.float64)])
    direct = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(least_squares_update(keys, resid, cov, lam), direct, atol=1e-8)
    # one edit: MEMIT's update is ROME's direction (Sherman-Morrison), scaled down
    one = least_squares_update(keys[:1], resid[:1], cov, lam).flatten()
    rome = rank_one_update(keys[0], resid[0], cov).flatten()
    assert torch.nn.functional.cosine_similarity(one, rome, dim=0) > 1 - 1e-9


def test_keys_are_batch_invariant_and_read_at_the_last_prompt_token(llama_tiny):
    model, tok = llama_tiny
    prompts = ["Intent: sort a list\nCode:", "Code: def f(x):\n    return x\nDescription:"]
    batched = compute_keys(model, tok, prompts, [1, 2], batch_size=2)
    for i, p in enumerate(prompts):
        ids = tok(p, return_tensors="pt")["input_ids"]
        with Trace(model, "model.layers.2.mlp.down_proj", retain_input=True) as tr:
            model(input_ids=ids)
        assert torch.allclose(batched[2][i], tr.input[0, -1], atol=1e-5)
        assert torch.allclose(batched[1][i], compute_keys(model, tok, [p], [1])[1][0], atol=1e-5)


def _count_forwards(model):
    calls = []
    return calls, model.register_forward_pre_hook(lambda *a: calls.append(1))


def test_stats_are_the_second_moment_and_cached(llama_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "cache"))
    model, tok = llama_tiny
    corpus = tmp_path / "corpus.py"
    corpus.write_text(CODE)
    calls, handle = _count_forwards(model)
    first = layer_stats(model, tok, [1, 2], corpus, samples=3, seq_len=16, batch_size=2)
    assert calls and first[1].shape == (128, 128)
    # C = K^T K / n over exactly the windows used
    keys = []
    for window in token_windows(tok, corpus, 3, 16):
        with Trace(model, "model.layers.2.mlp.down_proj", retain_input=True) as tr:
            model(input_ids=torch.tensor([window]))
        keys.append(tr.input[0])
    k = torch.cat(keys).double()
    assert torch.allclose(first[2].double(), k.T @ k / len(k), atol=1e-7)
    calls.clear()
    again = layer_stats(model, tok, [1, 2], corpus, samples=3, seq_len=16, batch_size=2)
    assert not calls and all(torch.equal(first[i], again[i]) for i in (1, 2))
    # a half-written / corrupt file is ignored and recomputed; a stray temp file is never read
    path = stats_path(model_fingerprint(model, tok), 2, corpus_fingerprint(corpus), 3, 16)
    assert path.is_file()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (path.parent / f".{path.name}.junk.tmp").write_bytes(b"garbage")
    fixed = layer_stats(model, tok, [1, 2], corpus, samples=3, seq_len=16, batch_size=2)
    assert calls and torch.allclose(fixed[2], first[2], atol=1e-7)
    handle.remove()


def test_rank_one_update_with_an_averaged_direction_by_hand():
    """k = (1, 0), k_bar = (1, 1), r = (2,): dW = r k_bar^T / (k . k_bar) = [[2, 2]]; (W + dW) k = W k + r."""
    k, k_bar, r = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0])
    dw = rank_one_update(k, r, direction=k_bar)
    assert torch.equal(dw, torch.tensor([[2.0, 2.0]], dtype=torch.float64))
    assert torch.equal(dw @ k.double(), r.double())


def test_context_prefixes_are_greedy_and_deterministic_and_keys_average_over_them(llama_tiny):
    import unicodedata

    from clmedit.locate.keys import averaged_keys, context_prefixes
    from clmedit.models.text import prompt_ids

    model, tok = llama_tiny
    prefixes = context_prefixes(model, tok, seeds=("The", "I"), length=6)
    assert prefixes == context_prefixes(model, tok, seeds=("The", "I"), length=6)
    ids = torch.tensor([prompt_ids(tok, "The")])
    for _ in range(6 - ids.shape[1]):  # greedy continuation to 6 tokens in all, then ". "
        with torch.no_grad():
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert prefixes[0] == unicodedata.normalize("NFKD", tok.decode(ids[0])) + ". "
    prompt = "Intent: sort a list\nCode:"
    texts = [prompt, prefixes[0] + prompt, prefixes[1] + prompt]
    want = compute_keys(model, tok, texts, [1])[1].mean(0)
    assert torch.allclose(averaged_keys(model, tok, [prompt], 1, prefixes)[0], want, atol=1e-6)


def test_kl_rows_are_the_prompt_itself(llama_tiny):
    from clmedit.locate.values import ValueParams, _batch
    from clmedit.models.text import prompt_ids

    _, tok = llama_tiny
    prompt = "Intent: sort a list\nCode:"
    assert ValueParams().kl_suffix == ""
    b = _batch(tok, [prompt], ["sorted(xs)"], ValueParams().kl_suffix, "cpu")
    p = prompt_ids(tok, prompt)
    assert b["ids"][1, : len(p)].tolist() == p and b["mask"][1].sum() == len(p)
    assert int(b["kl_last"][0]) == int(b["lookup"][1]) == len(p) - 1  # KL read at the edit token


def test_residual_split_linear_and_sqrt_by_hand(llama_tiny):
    """Two layers, C = I: the first layer's update is the least-squares one for resid / 2 or resid / sqrt(2)."""
    import math

    from clmedit.locate.keys import keys_and_outputs
    from clmedit.locate.solve import spread_over_layers

    model, tok = llama_tiny
    prompts = ["Intent: sort a list\nCode:"]
    site = "model.layers.1.mlp"
    keys, out = keys_and_outputs(model, tok, prompts, 0, site)
    target = out + 0.05
    weight = model.model.layers[0].mlp.down_proj.weight
    w0 = weight.detach().clone()
    for split, share in (("linear", 2.0), ("sqrt", math.sqrt(2.0))):
        w1 = model.model.layers[1].mlp.down_proj.weight.detach().clone()
        spread_over_layers(model, tok, prompts, [0, 1], site, target, {}, 1.0, split)
        want = least_squares_update(keys, (target - out) / share, None, 1.0)
        assert torch.allclose(weight.detach() - w0, want.float(), atol=1e-6)
        with torch.no_grad():
            weight.copy_(w0)
            model.model.layers[1].mlp.down_proj.weight.copy_(w1)


def test_dynamic_nll_stops_a_case_whose_target_is_already_the_argmax(llama_tiny):
    """PMET's rule: target = the model's own greedy tokens and KL = 0 at d = 0 -> no step, d stays 0."""
    from clmedit.locate.values import ValueParams, optimize_values
    from clmedit.models.text import sequence_ids

    model, tok = llama_tiny
    prompt, target = "return", "y"  # the tiny model's own greedy continuation of "return" is " y"
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        own = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
    full, p = sequence_ids(tok, prompt, target)
    assert full[p:] == own[0, ids.shape[1] :].tolist()  # the training target is the argmax token
    sites = [("mlp", 1)]
    dynamic = optimize_values(model, tok, [prompt], [target], sites, ValueParams(dynamic_nll=True))
    plain = optimize_values(model, tok, [prompt], [target], sites, ValueParams(stop_loss=0.0))
    assert dynamic.steps == [0] and not dynamic.delta["model.layers.1.mlp"].any()
    assert plain.steps[0] > 0


def test_each_case_stops_on_its_own_loss_as_if_optimised_alone(llama_tiny):
    """The study's code optimises one case at a time, stops it once its total loss is below 0.05
    and runs at most steps - 1 Adam steps: a batch gives every case the delta and step count it
    gets alone, also when the cases stop at different steps."""
    from clmedit.locate.values import ValueParams, optimize_values

    model, tok = llama_tiny
    prompts, targets = ["def sort(xs):", "import"], ["return sorted(xs)", "os"]
    sites = [("mlp", 1)]
    # on the tiny model "import" -> "os" falls below NLL 5.5 after one step, the other stays above 5.8
    hp = dict(steps=12, lr=0.5, clamp_factor=1000.0, weight_decay=0.0, kl_factor=0.0, stop_loss=5.5)
    together = optimize_values(model, tok, prompts, targets, sites, ValueParams(**hp, value_batch_size=2))
    alone = [
        optimize_values(model, tok, [p], [t], sites, ValueParams(**hp)) for p, t in zip(prompts, targets)
    ]
    assert together.steps == [a.steps[0] for a in alone]
    assert len(set(together.steps)) == 2 and max(together.steps) <= hp["steps"] - 1
    for i, a in enumerate(alone):
        assert together.nll[i] == pytest.approx(a.nll[0], abs=1e-4)
        assert torch.allclose(
            together.delta["model.layers.1.mlp"][i], a.delta["model.layers.1.mlp"][0], atol=1e-4
        )
    budget = optimize_values(
        model, tok, prompts[:1], targets[:1], sites, ValueParams(**{**hp, "stop_loss": 0.0})
    )
    assert budget.steps == [hp["steps"] - 1]


def test_kl_direction_and_decay_by_hand():
    """p_d = (0.9, 0.1), p = (0.5, 0.5): KL(p_d || p) = 0.9 ln 1.8 + 0.1 ln 0.2; d = (3, 4), ||h|| = 2: 5 / 4."""
    import math

    from clmedit.locate.values import kl_and_decay

    new, ref = torch.tensor([[0.9, 0.1]]).log(), torch.tensor([[0.5, 0.5]]).log()
    kl, decay = kl_and_decay(new, ref, [torch.tensor([[3.0, 4.0]])], [torch.tensor([2.0])])
    assert kl.item() == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-6)
    assert decay.item() == pytest.approx(1.25)


@pytest.mark.parametrize("name", ["rome", "memit", "pmet"])
def test_update_is_solved_for_the_key_of_the_texts_the_value_was_fitted_on(llama_tiny, name):
    """The study's objective: the value is fitted after the prompt alone and behind each of the 5
    generated context prefixes, and each layer's update is solved for those very texts' key,
    averaged as the study's code does (ROME: flat mean; MEMIT/PMET: the prompt alone and the
    prefixed texts as two equal groups). With C = I a one-case update is rank one along that key.
    Keys and texts are rebuilt here by hand, from the prefixes and compute_keys alone."""
    from clmedit.editors.base import get_editor
    from clmedit.locate.keys import context_prefixes
    from clmedit.models.text import sequence_ids
    from tests.conftest import make_case
    from tests.test_rome import TINY

    model, tok = llama_tiny
    case = make_case(0, target="os")
    layers = [1] if name == "rome" else [0, 1]
    editor = get_editor(
        name, **TINY, mom2_adjustment=False, mom2_weight=1e-3, layers=layers, reference_layers=4
    )
    prefixes = context_prefixes(model, tok)
    texts = [case.prompt] + [pre + case.prompt for pre in prefixes]
    weights = [model.model.layers[layer].mlp.down_proj.weight for layer in layers]
    w0 = [w.detach().clone() for w in weights]
    seen: list[list[int]] = []  # every token row the model embedded during the edit
    hook = model.model.embed_tokens.register_forward_hook(lambda _m, inp, _o: seen.extend(inp[0].tolist()))
    try:
        result = editor.apply(model, tok, [case])
    finally:
        hook.remove()
    edited = [w.detach().clone() for w in weights]
    result.restore()
    for text in texts:  # the value was fitted on c + prompt + " " + target for every context c
        ids, _ = sequence_ids(tok, text, case.target)
        assert any(row[: len(ids)] == ids for row in seen), text
    try:
        for i, layer in enumerate(layers):  # keys read with the layers below already edited
            keys = compute_keys(model, tok, texts, [layer])[layer].double()
            key = keys.mean(0) if name == "rome" else (keys[0] + keys[1:].mean(0)) / 2
            dw = (edited[i] - w0[i]).double()
            u = dw[dw.norm(dim=1).argmax()]  # any nonzero row of r u^T is parallel to u
            assert torch.nn.functional.cosine_similarity(u, key, dim=0).abs() > 0.9999
            with torch.no_grad():
                weights[i].copy_(edited[i])
    finally:
        with torch.no_grad():
            for w, w_init in zip(weights, w0):
                w.copy_(w_init)


def test_context_mean_flat_and_grouped_by_hand():
    """Prompt alone 0, three prefixed texts 1, 2, 6: flat mean 9 / 4, grouped (0 + 3) / 2."""
    from clmedit.locate.keys import context_mean

    x = torch.tensor([[0.0], [1.0], [2.0], [6.0]] * 2)
    assert context_mean(x, 3).flatten().tolist() == [2.25, 2.25]
    assert context_mean(x, 3, grouped=True).flatten().tolist() == [1.5, 1.5]
    assert torch.equal(context_mean(x[:2], 0, grouped=True), x[:2])
