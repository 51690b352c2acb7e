"""A-GRACE: contrastive key encoder, cached prompt features, and the editor and its ablations."""

from __future__ import annotations

import pytest
import torch

from clmedit.editors.agrace.editor import AGrace, AGraceHParams, AGraceLast, AGraceNoCL
from clmedit.editors.agrace.encoder import contrastive_loss, load_encoder, save_encoder
from clmedit.editors.agrace.features import cached_prompt_features, pool_tokens, prompt_features
from clmedit.editors.agrace.training import EncoderTraining, pair_loss, train_encoder
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.text import prompt_ids
from tests.conftest import make_case


def _toy(n: int = 160, d: int = 32, seed: int = 0):
    """Anchors; positives = anchor + small noise along a nuisance direction; negatives = other anchors nearby."""
    g = torch.Generator().manual_seed(seed)
    anchor = torch.randn(n, d, generator=g)
    nuisance = torch.randn(d, generator=g)
    positive = anchor + 2.0 * torch.randn(n, 1, generator=g) * nuisance + 0.1 * torch.randn(n, d, generator=g)
    negative = anchor + 0.8 * torch.randn(n, d, generator=g)  # near in raw space, but a different input
    return anchor, positive, negative


def test_encoder_training_lowers_loss_and_separates_pairs():
    anchor, positive, negative = _toy()
    settings = EncoderTraining(enc_epochs=25, enc_patience=10, enc_lr=2e-3)
    encoder, history = train_encoder(anchor, positive, negative, settings, margin=1.3)
    assert history["val"][history["best_epoch"]] < 0.5 * history["val"][0]
    with torch.no_grad():
        d_pos = (encoder(anchor) - encoder(positive)).norm(dim=-1)
        d_neg = (encoder(anchor) - encoder(negative)).norm(dim=-1)
    assert d_pos.median() < d_neg.median()
    assert (d_pos < d_neg).float().mean() > 0.9


def test_contrastive_loss_terms():
    za, zb = torch.zeros(2, 3), torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    y = torch.tensor([1.0, 0.0])
    # positive: d^2 = 0.25; negative: (1.3 - 0.5)^2 = 0.64
    assert torch.allclose(contrastive_loss(za, zb, y, 1.3), torch.tensor((0.25 + 0.64) / 2), atol=1e-5)


def test_saved_encoder_gives_identical_keys(tmp_path):
    anchor, positive, negative = _toy(64, 32)
    encoder, _ = train_encoder(anchor, positive, negative, EncoderTraining(enc_epochs=2))
    loaded = load_encoder(save_encoder(encoder, tmp_path / "enc"))
    assert loaded.config == encoder.config
    assert torch.equal(encoder(anchor), loaded(anchor))
    assert pair_loss(loaded, anchor, positive, negative, 1.3) == pair_loss(
        encoder, anchor, positive, negative, 1.3
    )


def test_pool_tokens_mean_and_last():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    assert torch.equal(pool_tokens(x, mask, "mean")[0], x[0, :2].mean(0))
    assert torch.equal(pool_tokens(x, mask, "last"), torch.stack([x[0, 1], x[1, 3]]))


def test_prompt_features_batched_equal_single_and_cached(llama_tiny, tmp_path):
    model, tok = llama_tiny
    prompts = [
        "Intent: sort a list\nCode:",
        "Intent: read a json file from disk\nCode:",
        "Code: x\nDescription:",
    ]
    batched = prompt_features(model, tok, prompts, layer=2, how="mean", batch_size=8)
    single = torch.cat([prompt_features(model, tok, [p], layer=2, how="mean") for p in prompts])
    assert batched.shape == (3, 128)
    assert torch.allclose(batched, single, atol=1e-5)
    first = cached_prompt_features(model, tok, prompts, 2, "last", cache=tmp_path)
    again = cached_prompt_features(model, tok, prompts, 2, "last", cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert torch.equal(first, again)


def _fit_small(editor, model, tok, tmp_path):
    train = [
        make_case(i, target=t) for i, t in enumerate(["sorted(xs)", "os.path.join(a, b)", "json.load(f)"] * 3)
    ]
    return editor.fit(model, tok, train, enc_epochs=3, feature_cache=str(tmp_path / "feat"))


def test_agrace_fit_apply_restore_and_reload(llama_tiny, tmp_path):
    model, tok = llama_tiny
    editor = AGrace(AGraceHParams(n_iter=3))
    history = _fit_small(editor, model, tok, tmp_path)
    assert len(history["val"]) >= 2
    prompts = [make_case(20).prompt, make_case(20).rephrase]
    keys = editor.prompt_keys(model, tok, prompts)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = editor.apply(model, tok, [make_case(20)])
    assert torch.allclose(result.info["keys"][0], keys[0], atol=1e-5)  # the key inserted is the prompt's
    result.restore()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    editor.save(tmp_path / "enc")
    again = AGrace(AGraceHParams(encoder_dir=str(tmp_path / "enc")))
    assert torch.equal(again.prompt_keys(model, tok, prompts), keys)


def test_ablation_keys(llama_tiny, tmp_path):
    """no-CL: the mean down_proj input over the prompt tokens; last: the encoder over the last one."""
    model, tok = llama_tiny
    prompts = [make_case(1).prompt, make_case(2).prompt]
    no_cl = AGraceNoCL()
    assert not no_cl.trainable
    path = arch_of(model).path("down_proj", no_cl.edit_layer(model))
    inputs = []
    for p in prompts:  # one prompt at a time: no padding to think about
        with Trace(model, path, retain_input=True, retain_output=False, detach=True, stop=True) as tr:
            model(torch.tensor([prompt_ids(tok, p)]))
        inputs.append(tr.input[0].float())  # (T, d_mlp)
    mean_keys = no_cl.prompt_keys(model, tok, prompts)
    assert torch.allclose(mean_keys, torch.stack([x.mean(0) for x in inputs]), atol=1e-6)
    last = AGraceLast(AGraceHParams(n_iter=2))
    _fit_small(last, model, tok, tmp_path)
    assert last.encoder.config.pool == "last"
    with torch.no_grad():
        want = last.encoder(torch.stack([x[-1] for x in inputs]))
    assert torch.allclose(last.prompt_keys(model, tok, prompts), want, atol=1e-5)


def test_train_cli_rejects_untrainable_editor_and_bad_fold(tmp_path):
    from typer.testing import CliRunner

    from clmedit.cli import app

    runner = CliRunner()
    data = tmp_path / "cases.jsonl"
    from clmedit.data.schema import write_cases

    write_cases(data, [make_case(i) for i in range(4)])
    out = runner.invoke(
        app, ["train", "--editor", "grace", "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert out.exit_code == 2 and "nothing to train" in out.output
    out = runner.invoke(
        app, ["train", "--editor", "agrace", "--data", str(data), "--out", str(tmp_path / "o"), "--fold", "2"]
    )
    assert out.exit_code == 2 and "--fold 2" in out.output


def test_train_cli_end_to_end_then_reload(llama_tiny, tmp_path):
    """`clmedit train` on a saved tiny model: writes the encoder, train.json and DONE; it reloads."""
    from typer.testing import CliRunner

    from clmedit.cli import app
    from clmedit.data.schema import write_cases

    model, tok = llama_tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = write_cases(tmp_path / "cases.jsonl", [make_case(i) for i in range(8)])
    args = ["train", "-e", "agrace", "-d", str(data), "-m", str(tmp_path / "m"), "-o", str(tmp_path / "f0")]
    out = CliRunner().invoke(app, [*args, "--hp", "enc_epochs=2", "--hp", f"feature_cache={tmp_path / 'c'}"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "f0" / "DONE").is_file() and (tmp_path / "f0" / "train.json").is_file()
    editor = AGrace()
    editor.load(tmp_path / "f0")
    assert editor.encoder.config.meta["train_cases"] == 4  # the other fold of 8 cases


def test_initial_scale_is_selected_by_mean_validation_score_over_seeds():
    from clmedit.editors.agrace.training import key_balanced_accuracy

    anchor, positive, negative = _toy(120, 32)
    settings = EncoderTraining(
        enc_epochs=5, enc_lr=1e-3, enc_init_pos_fractions=[0.01, 0.75], enc_selection_seeds=2
    )
    encoder, history = train_encoder(anchor, positive, negative, settings, margin=1.3)
    cands = history["candidates"]
    assert [len(c["scores"]) for c in cands] == [2, 2]
    assert cands[0]["mean_score"] != cands[1]["mean_score"]
    for c in cands:
        assert c["mean_score"] == pytest.approx(sum(c["scores"]) / 2)
        assert c["spread"] == pytest.approx(max(c["scores"]) - min(c["scores"]))
    winner = max(cands, key=lambda c: c["mean_score"])
    assert history["init_pos_fraction"] == winner["init_pos_fraction"]
    # the returned encoder is the winner's run on the split of the default seed 0 (25 % held out)
    val = torch.randperm(120, generator=torch.Generator().manual_seed(0))[:30]
    inside, outside, kept = key_balanced_accuracy(
        encoder, anchor[val], positive[val], negative[val], torch.arange(30), 1.0
    )
    assert (inside, outside, kept) == (winner["val_inside"], winner["val_outside"], winner["val_kept"])
    assert kept == outside  # one neighbour per case: kept cases = neighbours outside
    assert inside + kept == winner["scores"][0]


def test_every_neighbour_is_a_negative_pair():
    """Two cases, three neighbours (two of case 0): 2 positive + 3 negative pairs, loss by hand."""
    from clmedit.editors.agrace.encoder import EncoderConfig, KeyEncoder
    from clmedit.editors.agrace.training import _Pairs

    pairs = _Pairs.of(2, torch.tensor([0, 0, 1]))
    assert pairs.a.tolist() == [0, 1, 0, 0, 1] and pairs.b.tolist() == [0, 1, 2, 3, 4]
    assert pairs.y.tolist() == [1, 1, 0, 0, 0]
    enc = KeyEncoder(EncoderConfig(d_in=1, d_out=1, d_hidden=1))
    with torch.no_grad():  # E(x) = relu(x) = x on these positive inputs
        (
            enc.net[0].weight.fill_(1.0),
            enc.net[0].bias.zero_(),
            enc.net[2].weight.fill_(1.0),
            enc.net[2].bias.zero_(),
        )
    anchor, positive = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [2.0]])
    nbs = torch.tensor([[1.2], [3.0], [4.0]])
    # positives: 0.5^2, 0;  negatives (margin 1.3): (1.3-0.2)^2, (1.3-2)->0, (1.3-2)->0
    want = (0.25 + 0.0 + 1.1**2) / 5
    assert pair_loss(enc, anchor, positive, (nbs, torch.tensor([0, 0, 1])), 1.3) == pytest.approx(
        want, abs=1e-5
    )


def test_key_balanced_accuracy_counts_by_hand():
    from clmedit.editors.agrace.encoder import EncoderConfig, KeyEncoder
    from clmedit.editors.agrace.training import key_balanced_accuracy

    enc = KeyEncoder(EncoderConfig(d_in=2, d_out=2, d_hidden=4))
    with torch.no_grad():  # E(x) = relu([x, -x]) folded back: the identity on R^2
        enc.net[0].weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))
        enc.net[0].bias.zero_()
        enc.net[2].weight.copy_(torch.tensor([[1.0, 0, -1, 0], [0, 1, 0, -1]]))
        enc.net[2].bias.zero_()
    anchor = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    positive = torch.tensor([[0.5, 0.0], [5.0, 7.0]])  # inside r=1, outside
    neighbours = torch.tensor([[3.0, 0.0], [0.0, 0.9], [5.0, 7.5]])  # outside, inside | outside
    owner = torch.tensor([0, 0, 1])
    inside, outside, kept = key_balanced_accuracy(enc, anchor, positive, neighbours, owner, 1.0)
    assert inside == 0.5 and abs(outside - 2 / 3) < 1e-6
    assert kept == 0.5  # case 0 loses one of its two neighbours, case 1 keeps its one
