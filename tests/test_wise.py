"""WISE: the side memory answers its edits, the main memory everything else; shards merge into one.

Tiny random models give every prompt similar down_proj inputs, so an edit trained on top of
another in the same shard overwrites it there; the sequential tests therefore give each edit
its own shard (shard_size=1), which is how WISE keeps edits apart until it merges them.
"""

from __future__ import annotations

import pytest
import torch

from clmedit.config import preset_path
from clmedit.editors.base import get_editor
from clmedit.editors.wise.editor import WiseHParams
from clmedit.editors.wise.locality import irrelevant_prompts
from clmedit.editors.wise.memory import WiseMemory, attach, ties_merge
from clmedit.models.arch import arch_of
from clmedit.models.text import target_ids
from clmedit.models.tiny import tiny_model
from tests.conftest import greedy_ids, make_case

TARGETS = ("sorted(xs, reverse=True)", "json.load(f)")


def _wise(**overrides):
    return get_editor("wise", preset=str(preset_path("wise", "tiny")), **overrides)


def _logits(model, tok, prompts: list[str]) -> torch.Tensor:
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def _memory(model) -> WiseMemory:
    found = [m for m in model.modules() if isinstance(m, WiseMemory)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: Conv1D stores the weight as (in, out)
def test_edit_answers_from_side_memory_and_irrelevant_inputs_from_main(family):
    model, tok = tiny_model(family)
    case = make_case(0, target=TARGETS[0])
    editor = _wise()
    # the inputs the edit trained to keep out: the locality set's draw for the first edit
    others = irrelevant_prompts(case.task, case.prompt, editor.hparams.irrelevant, editor.hparams.seed)
    assert len(others) == editor.hparams.irrelevant and not {n.prompt for n in case.neighbours} & set(others)
    before = _logits(model, tok, [case.prompt]), _logits(model, tok, others)
    result = editor.apply(model, tok, [case])
    want = target_ids(tok, case.prompt, case.target)
    assert greedy_ids(model, tok, case.prompt, len(want)) == want
    assert result.info["acts"][0] > max(result.info["irrelevant_acts"][0])
    # the edit goes to the side memory; a left-padded batch of the irrelevant inputs, row by row, to the main
    # (apart: padding the edit prompt would shift gpt2's absolute positions, hence its activation)
    assert not torch.equal(_logits(model, tok, [case.prompt]), before[0])
    assert _memory(model).route.tolist() == [0]
    assert torch.equal(_logits(model, tok, others), before[1])
    assert _memory(model).route.tolist() == [-1] * len(others)
    result.restore()


def test_restore_is_bitwise_and_removes_memory_and_hook(llama_tiny):
    model, tok = llama_tiny
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    tree = [(n, type(m).__name__) for n, m in model.named_modules()]
    hooks = dict(model._forward_pre_hooks)
    case = make_case(1, target=TARGETS[1])
    before = _logits(model, tok, [case.prompt])
    result = _wise().apply(model, tok, [case])
    assert isinstance(arch_of(model).down_proj_module(model, 3), WiseMemory)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params.values()))  # W_v untouched
    result.restore()
    result.restore()
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == tree
    assert dict(model._forward_pre_hooks) == hooks
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert torch.equal(_logits(model, tok, [case.prompt]), before)


def test_second_sequential_edit_keeps_the_first_and_the_state_dict_holds_both(llama_tiny):
    model, tok = llama_tiny
    editor = _wise(shard_size=1, n_shards=10)
    first, second = (make_case(i, target=t) for i, t in enumerate(TARGETS))
    tree = [(n, type(m).__name__) for n, m in model.named_modules()]
    prompts = [first.prompt, second.prompt, *(n.prompt for n in first.neighbours)]
    before = _logits(model, tok, prompts)
    r1 = editor.apply(model, tok, [first])
    r2 = editor.apply(model, tok, [second])  # no restore in between: the same memory goes on
    assert not r1.info["continued"] and r2.info["continued"]
    assert r2.info["edits"] == 2 and r2.info["memories"] == 2
    for case in (first, second):
        want = target_ids(tok, case.prompt, case.target)
        assert greedy_ids(model, tok, case.prompt, len(want)) == want
    edited = _logits(model, tok, prompts)
    state = _memory(model).edit_state()
    r2.restore()  # any result takes the whole memory out
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == tree
    assert torch.equal(_logits(model, tok, prompts), before)
    r1.restore()

    # a fresh memory (no shards) on the unedited model takes the saved state and answers alike
    path = arch_of(model).path("down_proj", 3)
    fresh = WiseMemory(model.get_submodule(path))
    fresh.load_state_dict(state, strict=False)
    assert fresh.shards.shape[0] == 2
    remove = attach(model, path, fresh)
    assert torch.equal(_logits(model, tok, prompts), edited)
    remove()
    assert torch.equal(_logits(model, tok, prompts), before)


def test_shards_merge_into_one_side_memory(llama_tiny):
    model, tok = llama_tiny
    editor = _wise(shard_size=1, n_shards=2)
    cases = [make_case(i, target=t) for i, t in enumerate(TARGETS)]
    r1 = editor.apply(model, tok, cases[:1])
    memory = _memory(model)
    assert len(memory.shards) == 1 and r1.info["merges"] == 0  # the first shard waits for its partner
    shard = memory.shards[0].clone()
    r2 = editor.apply(model, tok, cases[1:])
    assert r2.info["merges"] == 1 and r2.info["memories"] == 1
    assert len(memory.shards) == 0 and not torch.isfinite(memory.work_threshold)
    thresholds = [editor.hparams.act_ratio * a for a in r1.info["acts"] + r2.info["acts"]]
    assert float(memory.side_threshold) == pytest.approx(min(thresholds))
    main = memory.main_weight
    # where only the first shard moved, the merged side memory carries its change unchanged
    only_first = (shard != main) & ~_shard_mask(editor, memory, edits=1)
    assert only_first.any()
    torch.testing.assert_close(memory.side[only_first], shard[only_first], rtol=0, atol=1e-6)
    for case in cases:  # both edit prompts are answered by the merged memory
        _logits(model, tok, [case.prompt])
        assert _memory(model).route.tolist() == [0]
    r2.restore()


def _shard_mask(editor, memory: WiseMemory, edits: int) -> torch.Tensor:
    """The gradient mask of the shard begun after `edits` edits (the editor seeds it so)."""
    gen = torch.Generator().manual_seed(editor.hparams.seed + edits)
    return torch.rand(memory.work.shape, generator=gen) < editor.hparams.mask_ratio


def test_ties_merge_closed_form():
    deltas = torch.tensor([[1.0, -2.0, 0.0, 3.0], [1.0, 1.0, 2.0, -1.0]])
    # elected signs (+, -, +, +); mean of the agreeing non-zero entries
    assert torch.equal(ties_merge(deltas, density=1.0), torch.tensor([1.0, -2.0, 2.0, 3.0]))
    # density 0.5 keeps the two largest of each, (-2, 3) and (2, -1); -1 then loses the sign vote
    trimmed = torch.tensor([[0.5, -2.0, 0.0, 3.0], [0.5, 0.25, 2.0, -1.0]])
    assert torch.equal(ties_merge(trimmed, density=0.5), torch.tensor([0.0, -2.0, 2.0, 3.0]))


def test_reads_easyedit_yaml(tmp_path):
    path = tmp_path / "wise.yaml"
    path.write_text(
        "alg_name: WISE\ninner_params:\n- model.layers[27].mlp.down_proj.weight\nedit_lr: 1.0\n"
        "n_iter: 70\nact_margin: [5.0, 20.0, 10.0]\nact_ratio: 0.88\nsave_freq: 500\nmerge_freq: 1000\n"
        "densities: 0.53\nmask_ratio: 0.2\nretrieve: true\n"
    )
    hp = WiseHParams.from_yaml(path)
    got = (hp.layer, hp.alpha, hp.beta, hp.gamma, hp.shard_size, hp.n_shards)
    assert got == (27, 5.0, 20.0, 10.0, 500, 2)
