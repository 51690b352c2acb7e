"""GRACE: codebook semantics, the generation-time wrapper (KV cache, left padding, no cache,
state reset), key override, study YAML, and one check on the real default model."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from clmedit.editors.base import get_editor
from clmedit.editors.grace.codebook import Codebook
from clmedit.editors.grace.editor import Grace, GraceHParams
from clmedit.editors.grace.layer import GraceLayer
from clmedit.models.text import prompt_ids, target_ids
from tests.conftest import make_case

TINY = {"eps": 0.01, "n_iter": 30, "replacement": "steps", "val_init": "warm"}  # ours: steers a random model


def test_codebook_add_expand_split():
    book = Codebook(eps_init=1.0)
    v = torch.zeros(2, 3)
    assert book.insert(torch.tensor([0.0, 0.0]), "a", v).op == "added"
    assert book.insert(torch.tensor([5.0, 0.0]), "b", v).op == "added"  # farther than 1 + 1
    ins = book.insert(torch.tensor([1.5, 0.0]), "a", v)  # same label within eps_i + eps_init: grow
    assert (ins.op, ins.index) == ("expanded", 0) and book.radii[0].item() == pytest.approx(1.5)
    ins = book.insert(torch.tensor([5.0, 1.0]), "c", v)  # conflict with "b": both radii halve
    assert ins.op == "split" and book.radii[1].item() == pytest.approx(0.5)
    assert book.radii[2].item() == pytest.approx(0.5) and len(book) == 3
    rows, dist = book.lookup(torch.tensor([[1.4, 0.0], [5.0, 0.9], [3.0, 3.0]]))
    assert rows.tolist() == [0, 2, -1] and dist[0].item() == pytest.approx(1.4)


def test_codebook_add_appends_where_insert_would_expand():
    book = Codebook(eps_init=1.0)
    v = torch.ones(2, 3)
    book.insert(torch.tensor([0.0, 0.0]), "a", v)
    change = book.checkpoint()
    assert book.add(torch.tensor([0.5, 0.0]), 0.2, "a", v, change) == 1  # insert would grow entry 0
    assert book.radii.tolist() == pytest.approx([1.0, 0.2]) and book.values[1].data_ptr() == v.data_ptr()
    rows, _ = book.lookup(torch.tensor([[0.6, 0.0], [1.2, 0.0]]))
    assert rows.tolist() == [1, -1]  # the nearer covering ball answers; beyond both balls nothing
    book.rollback(change)
    assert len(book) == 1 and book.radii.tolist() == [1.0]


def test_codebook_moving_average_and_cosine():
    book = Codebook(eps_init=0.5, expand="moving_average", dist_fn="cos")
    book.insert(torch.tensor([1.0, 0.0]), "a", torch.zeros(1, 2))
    book.insert(torch.tensor([1.0, 1.0]), "a", torch.zeros(1, 2))
    assert torch.allclose(book.keys[0], torch.tensor([1.0, 0.5]))


def test_codebook_state_round_trip_is_bitwise_and_checked():
    """Values of different step counts come back exactly; a state that does not fit is refused."""
    book = Codebook(eps_init=0.5, dist_fn="cos")
    book.insert(torch.tensor([0.0, 1.0]), "a", torch.randn(3, 4))
    book.insert(torch.tensor([1.0, 0.0]), "b", torch.randn(1, 4))
    tensors, meta = book.state()
    assert tensors["values"].shape == (4, 4) and tensors["steps"].tolist() == [3, 1]  # packed, no padding
    again = Codebook.from_state(tensors, json.loads(json.dumps(meta)))
    assert (again.eps_init, again.dist_fn, again.labels) == (0.5, "cos", ["a", "b"])
    assert torch.equal(again.keys, book.keys) and torch.equal(again.radii, book.radii)
    assert all(torch.equal(x, y) for x, y in zip(again.values, book.values))
    padded = torch.zeros(2, 3, 4)  # the layout fix files had before values were packed
    padded[0], padded[1, :1] = book.values[0], book.values[1]
    earlier = Codebook.from_state({**tensors, "values": padded}, meta)
    assert all(torch.equal(x, y) for x, y in zip(earlier.values, book.values))
    assert len(Codebook.from_state(*Codebook().state())) == 0
    with pytest.raises(ValueError, match="step counts"):
        Codebook.from_state({**tensors, "steps": torch.tensor([4, 1])}, meta)
    with pytest.raises(ValueError, match="step counts"):
        Codebook.from_state({**tensors, "values": padded, "steps": torch.tensor([4, 1])}, meta)
    with pytest.raises(ValueError, match="holds tensors"):
        Codebook.from_state({**tensors, "extra": torch.zeros(1)}, meta)
    with pytest.raises(ValueError, match="do not fit 3 entries"):
        Codebook.from_state(tensors, {**meta, "labels": ["a"] * 3})


def _calls(model, path: str) -> tuple[list, object]:
    """Record (input, output) of every call of module `path`; returns (records, hook handle)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = model.get_submodule(path).register_forward_hook(
        lambda m, a, o: seen.append((a[0].detach(), o.detach()))
    )
    return seen, handle


@pytest.mark.parametrize("eps", [1e6, 1e-6])
def test_published_grace_one_vector_and_own_key_lookup_while_decoding(llama_tiny, eps):
    """The study's GRACE (replace_last, cold): one value v at the key token; a decoded token's output
    is v exactly when that token's own down_proj input is inside the nearest entry's ball."""
    model, tok = llama_tiny
    case = make_case(0)
    editor = Grace(GraceHParams(eps=eps, n_iter=3))
    assert (editor.hparams.replacement, editor.hparams.val_init) == ("last", "cold")
    result = editor.apply(model, tok, [case])
    book = result.info["codebook"]
    assert book.values[0].shape[0] == 1  # one vector, not one per target token
    v = book.values[0][0]
    path = [n for n, m in model.named_modules() if isinstance(m, GraceLayer)][0]
    seen, handle = _calls(model, path)
    try:
        cached = _greedy(model, tok, [case.prompt], 4)
        uncached = _greedy(model, tok, [case.prompt], 4, use_cache=False)
    finally:
        handle.remove()
    assert cached == uncached
    wrapper = model.get_submodule(path)
    prefill, decoded = seen[0], seen[1:4]
    assert torch.equal(prefill[1][0, -1], v)  # the key token: v (the key is inside its own ball)
    assert torch.equal(prefill[1][0, :-1], wrapper.inner(prefill[0])[0, :-1])
    for x, out in decoded:  # KV cache: one new token per call
        inside = bool(torch.cdist(x[0].float(), book.keys.float()).min() <= book.radii.min())
        assert inside == (eps > 1)
        want = v if inside else wrapper.inner(x)[0, 0]
        assert torch.equal(out[0, 0], want)
    result.restore()


def test_key_replacement_leaves_decoded_tokens_alone(llama_tiny):
    """The study's A-GRACE (`replacement: key`): v at the key token only, even when every key matches."""
    model, tok = llama_tiny
    case = make_case(0)
    result = Grace(GraceHParams(eps=1e6, n_iter=3, replacement="key")).apply(model, tok, [case])
    path = [n for n, m in model.named_modules() if isinstance(m, GraceLayer)][0]
    seen, handle = _calls(model, path)
    try:
        _greedy(model, tok, [case.prompt], 3)
    finally:
        handle.remove()
    wrapper = model.get_submodule(path)
    assert torch.equal(seen[0][1][0, -1], result.info["codebook"].values[0][0])
    assert all(torch.equal(out, wrapper.inner(x)) for x, out in seen[1:])
    result.restore()


def _greedy(model, tok, prompts: list[str], n: int, **kw) -> list[list[int]]:
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, **kw)
    return out[:, enc["input_ids"].shape[1] :].tolist()


def test_batch_apply_generation_and_restore(llama_tiny, cases):
    model, tok = llama_tiny
    other = make_case(5)
    n = 12
    before = _greedy(model, tok, [other.prompt], n)[0]
    logits_before = model(torch.tensor([prompt_ids(tok, other.prompt)])).logits
    result = get_editor("grace", **TINY).apply(model, tok, cases)  # three sequential inserts
    assert result.info["ops"] == ["added"] * 3 and result.info["keys"].shape == (3, 128)
    assert isinstance(model.get_submodule("model.layers.3.mlp.down_proj"), GraceLayer)
    # a left-padded batch: edited rows give their targets, the unedited row is untouched
    prompts = [c.prompt for c in cases] + [other.prompt]
    outs = _greedy(model, tok, prompts, n)
    for case, out in zip(cases, outs):
        want = target_ids(tok, case.prompt, case.target)
        assert out[: len(want)] == want
    assert outs[-1] == before
    # a fresh prefill resets the state: the unmatched prompt alone, then without a KV cache
    assert _greedy(model, tok, [other.prompt], n)[0] == before
    assert torch.equal(model(torch.tensor([prompt_ids(tok, other.prompt)])).logits, logits_before)
    nocache = _greedy(model, tok, [cases[1].prompt, other.prompt], n, use_cache=False)
    want = target_ids(tok, cases[1].prompt, cases[1].target)
    assert nocache[0][: len(want)] == want
    assert nocache[1] == before
    result.restore()
    assert type(model.get_submodule("model.layers.3.mlp.down_proj")).__name__ == "Linear"
    assert model._forward_pre_hooks == {}


class MeanKeyGrace(Grace):
    """A subclass with another key space (as A-GRACE): mean prompt input, projected to 8 dims."""

    name = "grace-mean-test"

    def keys(self, inputs, prompt_mask):
        m = prompt_mask.to(inputs.dtype).unsqueeze(-1)
        mean = (inputs * m).sum(1) / m.sum(1)
        return mean @ torch.ones(inputs.shape[-1], 8) * 10


def test_key_override_is_used_at_insert_and_prefill(llama_tiny, cases):
    model, tok = llama_tiny
    editor = MeanKeyGrace(GraceHParams(**TINY))
    result = editor.apply(model, tok, cases[:2])
    assert result.info["keys"].shape == (2, 8)
    assert editor.prompt_keys(model, tok, [cases[0].prompt]).shape == (1, 8)
    outs = _greedy(model, tok, [cases[0].prompt, cases[1].prompt], 12)
    for case, out in zip(cases, outs):
        want = target_ids(tok, case.prompt, case.target)
        assert out[: len(want)] == want
    result.restore()


def test_from_study_yaml(tmp_path):
    raw = {
        "alg_name": "GRACE",
        "model_name": "codellama/CodeLlama-7b-hf",
        "inner_params": ["model.layers[27].mlp.down_proj.weight"],
        "edit_lr": 1.0,
        "n_iter": 30,
        "eps": 1.0,
        "dist_fn": "euc",
        "val_init": "cold",
        "replacement": "replace_last",
        "eps_expand": "coverage",
        "num_pert": 8,
    }
    path = tmp_path / "codellama-7b.yaml"
    path.write_text(yaml.safe_dump(raw))
    hp = GraceHParams.from_yaml(path, n_iter=5)
    assert (hp.layer, hp.n_iter, hp.eps, hp.val_init, hp.replacement) == (27, 5, 1.0, "cold", "last")
    assert hp.layer_for(hp.layer, 30) == 25
    for model in ("codellama/CodeLlama-7b-hf", "Qwen/CodeQwen1.5-7B", "stabilityai/stable-code-3b"):
        study = get_editor("grace", preset=model).hparams  # our presets give the published method
        assert (study.layer, study.val_init, study.replacement) == (27, "cold", "last")
        assert get_editor("agrace", preset=model).hparams.replacement == "key"
    assert get_editor("grace", preset="smollm2-135m").hparams.replacement == "steps"
    from clmedit.editors.agrace.editor import AGraceHParams

    assert AGraceHParams.from_study(raw).replacement == "key"  # its code skips decoded tokens
    with pytest.raises(ValueError, match="replace_all"):
        GraceHParams.from_study({**raw, "replacement": "replace_all"})
    assert get_editor("grace", preset="smollm2-135m").hparams.layer_for(25, 30) == 25


@pytest.mark.slow
def test_real_model_edit_is_effective_and_specific():
    from clmedit.data.schema import EditCase, format_prompt
    from clmedit.models.load import load_model

    model, tok = load_model("smollm2-135m", device="cpu")
    intents = ["concatenate a list of strings `words` with commas", "get the current working directory"]
    targets = ["','.join(words)", "os.getcwd()"]
    edits = [
        EditCase(
            case_id=str(i), task="cnle", prompt=format_prompt("cnle", t), target=y, rephrase="", neighbours=[]
        )
        for i, (t, y) in enumerate(zip(intents, targets))
    ]
    neighbour = format_prompt("cnle", "list the files in the directory `path`")
    before = _greedy(model, tok, [neighbour], 16)[0]
    result = get_editor("grace", preset="smollm2-135m").apply(model, tok, edits)
    outs = _greedy(model, tok, [e.prompt for e in edits] + [neighbour], 16)
    for edit, out in zip(edits, outs):
        want = target_ids(tok, edit.prompt, edit.target)
        assert out[: len(want)] == want
    assert outs[-1] == before
    result.restore()


def test_value_training_stops_once_the_target_decodes(llama_tiny, cases):
    """With stop_when_decoded a value stops at the first step whose target decodes greedily; without
    it every allowed step is taken. Both edits produce their targets."""
    model, tok = llama_tiny
    n_iter = 60
    used = {}
    for stop in (True, False):
        result = get_editor("grace", **{**TINY, "n_iter": n_iter, "stop_when_decoded": stop}).apply(
            model, tok, cases
        )
        used[stop] = result.info["steps"]
        for case, out in zip(cases, _greedy(model, tok, [c.prompt for c in cases], 12)):
            want = target_ids(tok, case.prompt, case.target)
            assert out[: len(want)] == want
        result.restore()
    assert used[False] == [n_iter] * len(cases)
    assert all(0 < s < n_iter for s in used[True])


def test_min_steps_keeps_a_value_training_past_the_first_decode(llama_tiny, cases):
    """`min_steps` is a floor under the early stop: each value takes at least that many steps, and
    stops at the first decoding step from there on (fewer than n_iter); A-GRACE's family sets it."""
    model, tok = llama_tiny
    early = get_editor("grace", **{**TINY, "n_iter": 60}).apply(model, tok, cases)
    first = early.info["steps"]
    early.restore()
    floor = max(first) + 3
    result = get_editor("grace", **{**TINY, "n_iter": 60, "min_steps": floor}).apply(model, tok, cases)
    assert all(floor <= s < 60 for s in result.info["steps"])
    result.restore()
    assert get_editor("agrace").hparams.min_steps == get_editor("scope").hparams.min_steps == 8
    assert get_editor("grace").hparams.min_steps == 0


def test_target_decodes_reads_the_shifted_argmax():
    """Logits at position t predict the label at t+1; IGNORE labels are not scored."""
    from clmedit.models.text import IGNORE, target_decodes

    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 1.0  # predicts token 2 at position 1
    logits[0, 1, 3] = 1.0  # predicts token 3 at position 2
    assert target_decodes(logits, torch.tensor([[IGNORE, 2, 3]]))
    assert not target_decodes(logits, torch.tensor([[IGNORE, 2, 1]]))
    assert target_decodes(logits, torch.tensor([[IGNORE, IGNORE, 3]]))
