"""SCOPE: the scope choice, hard negatives, per-entry radii, and its trained part on disk."""

import math
import os

import pytest
import torch

from clmedit.data.schema import format_prompt
from clmedit.editors.agrace.editor import TrainingFeatures
from clmedit.editors.agrace.encoder import EncoderConfig
from clmedit.editors.base import get_editor
from clmedit.editors.scope.fit import (
    Scope,
    choose_scope,
    hard_negatives,
    kept_share,
    nearest_known,
    rank,
    unprobed_rows,
    validation_distances,
)
from clmedit.models.text import target_ids
from tests.conftest import greedy_ids, make_case


def test_choose_scope_by_hand():
    # three validation cases; each one's nearest neighbour is also the nearest known key (the bank)
    positive = torch.tensor([0.5, 0.5, 2.0])
    neighbours = torch.tensor([[1.0, 3.0], [0.8, 3.0], [2.5, math.inf]])
    bank = torch.tensor([1.0, 0.8, 2.5])
    # one radius for all: R must stay below 0.8 to keep case 1's neighbour out, so case 2's
    # rephrase (2.0) cannot be covered: the smallest R covering cases 0 and 1 is 0.5
    one = choose_scope(positive, neighbours, bank, kept_target=1.0, gammas=(math.inf,))
    assert (one.radius, one.inside, one.kept) == (0.5, pytest.approx(2 / 3), 1.0)
    # scoped: gamma 0.8 gives scopes (0.8, 0.64, 2.0): every rephrase in, every neighbour out;
    # gammas are tried in increasing order and R in increasing order, the first perfect pair wins
    scoped = choose_scope(positive, neighbours, bank, kept_target=1.0)
    assert (scoped.gamma, scoped.radius, scoped.inside, scoped.kept) == (0.8, 2.0, 1.0, 1.0)
    assert scoped.of(bank).tolist() == pytest.approx([0.8, 0.64, 2.0])
    # a fixed R: the best gamma under it
    fixed = choose_scope(positive, neighbours, bank, kept_target=1.0, radius=1.0)
    assert fixed.radius == 1.0 and fixed.kept == 1.0 and fixed.inside == pytest.approx(2 / 3)
    # an unreachable target: the most cases kept wins
    far = choose_scope(torch.tensor([5.0]), torch.tensor([[1.0]]), torch.tensor([9.0]), kept_target=1.0)
    assert far.kept == 1.0 and far.inside == 0.0


def test_choose_scope_by_default_maximises_inside_plus_kept():
    # one radius for all (gamma inf); the candidate radii are 0, 0.5, 1.0 and inf:
    #   R 0: inside 0, kept 1 (sum 1); R 0.5: 1/3, 1 (4/3); R 1.0: 1, 2/3 (5/3); R inf: 1, 0 (1)
    positive = torch.tensor([0.5, 1.0, 1.0])
    neighbours = torch.tensor([[0.9], [2.0], [2.0]])
    bank = torch.full((3,), math.inf)
    balanced = choose_scope(positive, neighbours, bank, kept_target=None, gammas=(math.inf,))
    assert (balanced.radius, balanced.inside, balanced.kept) == (1.0, 1.0, pytest.approx(2 / 3))
    # a user who needs every case kept gets the widest scope that keeps them all
    strict = choose_scope(positive, neighbours, bank, kept_target=1.0, gammas=(math.inf,))
    assert (strict.radius, strict.inside, strict.kept) == (0.5, pytest.approx(1 / 3), 1.0)
    # equal sums (R 0.5: 1/2 + 1; R 1.0: 1 + 1/2): the scope that keeps more wins
    tie = choose_scope(torch.tensor([0.5, 1.0]), torch.tensor([[0.9], [5.0]]), torch.full((2,), math.inf),
                       kept_target=None, gammas=(math.inf,))  # fmt: skip
    assert (tie.radius, tie.kept) == (0.5, 1.0)
    assert rank(0.1 + 0.2, 0.7, None) == rank(0.3, 0.7, None)  # float sums of equal counts tie
    assert rank(0.9, 0.89, 0.9) < rank(0.1, 0.9, 0.9)  # short of the target loses to any scope meeting it


def test_choose_scope_counts_an_edit_as_the_union_of_its_balls():
    # two validation cases, each with its prompt's ball and one rewrite's ball (J = 2)
    positive = torch.tensor([[2.0, 0.4], [0.3, math.inf]])  # case 1 has no rewrite: inf throughout
    neighbours = torch.tensor([[[1.0], [0.6]], [[1.5], [math.inf]]])
    bank = torch.tensor([[1.0, 0.6], [1.5, math.inf]])
    # one radius: 0.4 puts case 0's rephrase in through the rewrite's ball, and both neighbours
    # stay out (0.6 and 1.0 from the balls); the prompt's ball alone could never reach 2.0
    union = choose_scope(positive, neighbours, bank, kept_target=1.0, gammas=(math.inf,))
    assert (union.radius, union.inside, union.kept) == (pytest.approx(0.4), 1.0, 1.0)
    alone = choose_scope(positive[:, 0], neighbours[:, 0], bank[:, 0], kept_target=1.0, gammas=(math.inf,))
    assert (alone.radius, alone.inside, alone.kept) == (pytest.approx(0.3), 0.5, 1.0)
    # a ball that holds a neighbour loses the case although the other ball keeps it out
    wide = choose_scope(positive, neighbours, bank, kept_target=1.0, gammas=(math.inf,), radius=0.7)
    assert (wide.kept, wide.inside) == (0.5, 1.0)


def test_a_case_with_fewer_neighbours_than_a_scored_case_counts_its_missing_ones():
    # case 0 kept its one neighbour out; case 1 has five, one of them inside the scope
    neighbours = torch.tensor([[1.5, math.inf, math.inf, math.inf, math.inf], [0.5, 2.0, 2.0, 2.0, 2.0]])
    scope = torch.ones(1, 2, 1)  # one candidate, two cases, one ball each: radius 1
    nb_min = neighbours.min(1, keepdim=True).values
    assert kept_share(neighbours[:, None], nb_min, scope, None).tolist() == [0.5]  # what is observed
    # 1 of the 6 observed neighbours is inside: case 0's four missing ones are out with (5/6)^4
    expected = kept_share(neighbours[:, None], nb_min, scope, 5)
    assert expected.tolist() == pytest.approx([(5 / 6) ** 4 / 2])
    wide = choose_scope(
        torch.tensor([0.1, 0.1]), neighbours, torch.full((2,), math.inf), None, (math.inf,), 1.0, 5
    )
    assert wide.kept == pytest.approx((5 / 6) ** 4 / 2)


def _features(cases):
    """1-d features: prompt i at 10 i, its rephrase at 10 i + 1, its neighbours at 10 i + 2 + j,
    except that a neighbour text seen before reuses the first one's feature (identical text, identical key)."""
    seen: dict[str, float] = {}
    rows = []
    for i, c in enumerate(cases):
        for j, n in enumerate(c.neighbours):
            rows.append(seen.setdefault(n.prompt, 10.0 * i + 2 + j))
    n = len(cases)
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor([len(c.neighbours) for c in cases]))
    return TrainingFeatures(
        10.0 * torch.arange(n)[:, None], 10.0 * torch.arange(n)[:, None] + 1, torch.tensor(rows)[:, None],
        owner, EncoderConfig(d_in=1), list(cases),
    )  # fmt: skip


def test_validation_knows_no_probe_of_its_validation_cases():
    """The runner's rule inside the training data: a validation case's neighbour that is, verbatim, a
    training case's neighbour (one shared pool) is not a known key when that case is validated."""
    from tests.test_probe_disjoint import pooled_cases

    cases = pooled_cases(6)
    data = _features(cases)
    val, train = torch.tensor([0]), torch.arange(1, 6)
    known = unprobed_rows(data, val)
    texts = [n.prompt for c in cases for n in c.neighbours]
    probes = {cases[0].prompt, cases[0].rephrase, *(n.prompt for n in cases[0].neighbours)}
    assert [t not in probes for t in texts] == known.neighbours.tolist()
    assert not known.neighbours[data.owner == 0].any() and known.anchor.tolist() == [False] + [True] * 5
    identity = torch.nn.Identity()
    _, nbs, leaky = validation_distances(identity, data, val, train)
    _, _, honest = validation_distances(identity, data, val, train, known=known)
    # with its shared neighbours known, the nearest known key is one of its own neighbours (the leak)
    assert float(leaky[0, 0]) == float(nbs[0, 0].min())
    assert float(honest[0, 0]) > float(nbs[0, 0].min())


def test_hard_negatives_are_the_most_similar_other_prompts():
    x = torch.tensor([[1.0, 0.0, 0.1], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 0.9, 0.1]])
    index, owner = hard_negatives(x, torch.arange(4), k=1)
    assert owner.tolist() == [0, 1, 2, 3] and index.tolist() == [1, 0, 3, 2]
    # only the training split is a pool: prompt 1 (held out) gets prompt 0, nobody gets prompt 1
    index, owner = hard_negatives(x, torch.tensor([0, 2, 3]), k=1)
    assert index.tolist()[1:] == [0, 3, 2] and 1 not in index.tolist()
    assert hard_negatives(x, torch.arange(4), k=0)[0].numel() == 0


def test_hard_negatives_also_draw_on_unprobed_texts():
    x = torch.tensor([[1.0, 0.0, 0.1], [0.0, 1.0, 0.0], [0.1, 0.9, 0.1]])
    extra = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    index, owner = hard_negatives(x, torch.arange(3), k=1, extra=extra)
    # prompt 0's nearest is the unprobed text 0 (row 3 of cat(prompts, extra)); 1 and 2 are each other's
    assert owner.tolist() == [0, 1, 2] and index.tolist() == [3, 2, 1]
    index, _ = hard_negatives(x, torch.arange(3), k=4, extra=extra)
    assert 4 in index.tolist()  # the far unprobed text too, once k asks for every candidate


def test_validation_knows_no_unprobed_text_that_is_a_probe_of_its_validation_cases():
    from tests.test_probe_disjoint import pooled_cases

    cases = pooled_cases(6)
    data = _features(cases)
    free = format_prompt("cnle", "parse a json string")
    known = unprobed_rows(data, torch.tensor([0]), [free, cases[0].neighbours[0].prompt, cases[1].prompt])
    assert known.unprobed.tolist() == [True, False, True]  # case 1's prompt is no probe of case 0
    extra = torch.tensor([[1000.0], [1000.0], [1000.0]])
    extra[1] = float(data.neighbours[0]) + 0.5  # the probe's text sits right by case 0's first neighbour
    identity = torch.nn.Identity()
    *_, without = validation_distances(identity, data, torch.tensor([0]), torch.arange(1, 6), known=known)
    *_, withal = validation_distances(identity, data, torch.tensor([0]), torch.arange(1, 6), None, known, extra)
    assert torch.equal(without, withal)  # the probe's row is not known, the others are far
    extra[0] = 0.5  # a text that is no probe, right by case 0's prompt (at 0): the nearest known key now
    *_, nearer = validation_distances(identity, data, torch.tensor([0]), torch.arange(1, 6), None, known, extra)
    assert float(nearer[0, 0]) == 0.5 < float(without[0, 0])


def test_unprobed_texts_join_the_bank_up_to_the_limit(llama_tiny):
    model, tok = llama_tiny
    train = [make_case(i) for i in range(2, 10)]
    texts = [format_prompt("cnle", f"count the words of line {i}") for i in range(5)] + [train[0].prompt]
    base = 8 * 2 + sum(len(c.neighbours) for c in train)
    editor = get_editor("scope", preset="tiny", enc_selection_seeds=1, enc_init_pos_fractions=[0.5])
    assert editor.fit(model, tok, train, unprobed=texts)["bank"] == base  # off by default
    history = editor.fit(model, tok, train, unprobed=texts, unprobed_limit=100)
    assert history["bank"] == base + 5 and history["unprobed"] == 5  # a training input is not new
    history = editor.fit(model, tok, train, unprobed=texts, unprobed_limit=3)
    assert history["bank"] == base + 3 and history["unprobed"] == 3


def test_nearest_known_ignores_the_query_itself():
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = nearest_known(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), bank)
    assert d.tolist() == [5.0, 3.0]  # the first query's own copy in the bank does not count


@pytest.fixture
def fitted(llama_tiny):
    model, tok = llama_tiny
    editor = get_editor("scope", preset="tiny")
    history = editor.fit(model, tok, [make_case(i) for i in range(2, 10)])
    return model, tok, editor, history


def test_scope_fit_edit_restore_and_reload(fitted, tmp_path):
    model, tok, editor, history = fitted
    assert history["bank"] == 8 * 2 + sum(len(make_case(i).neighbours) for i in range(2, 10))
    assert {"radius", "gamma", "inside", "kept"} <= set(history["scope"])
    case = make_case(0, target="sorted(xs, reverse=True)")
    before = greedy_ids(model, tok, case.prompt, 6)
    result = editor.apply(model, tok, [case])
    want = target_ids(tok, case.prompt, case.target)
    edited = greedy_ids(model, tok, case.prompt, len(want))
    assert edited == want
    book = result.info["codebook"]
    assert float(book.radii[0]) == pytest.approx(editor.entry_radius(result.info["keys"][0]))
    result.restore()
    assert greedy_ids(model, tok, case.prompt, 6) == before

    editor.save(tmp_path)
    again = get_editor("scope", preset="tiny")
    again.load(tmp_path)
    assert torch.equal(again.bank, editor.bank) and again.scope == editor.scope
    key = result.info["keys"][0]
    assert again.entry_radius(key) == editor.entry_radius(key)
    result = again.apply(model, tok, [case])
    assert greedy_ids(model, tok, case.prompt, len(want)) == edited
    result.restore()


def test_an_edit_also_answers_at_the_keys_of_its_prompt_s_rewrites(fitted):
    """Each rewrite of the edited prompt (the build's renaming, here of a CSNE function) is one more
    entry with the edit's value and its own scope; restore takes them all out."""
    model, tok, editor, _ = fitted
    code = "def add(a, b):\n    total = a + b\n    return total"
    case = make_case(0, task="csne", target="Add two numbers.")
    case = case.model_copy(update={"prompt": format_prompt("csne", code)})
    rewrites = editor.prompt_rewrites("csne", case.prompt)
    assert len(rewrites) == editor.hparams.edit_rewrites_csne and case.prompt not in rewrites
    assert all("def add(" in r and "total" not in r for r in rewrites)  # renamed parameters and locals
    result = editor.apply(model, tok, [case])
    book = result.info["codebook"]
    assert len(book) == 1 + len(rewrites) and set(book.labels) == {case.target}
    assert {v.data_ptr() for v in book.values} == {book.values[0].data_ptr()}  # one value, several keys
    keys = editor.prompt_keys(model, tok, rewrites)
    index, _ = book.lookup(keys)
    assert index.tolist() == list(range(1, 1 + len(rewrites)))
    assert book.radii[1:].tolist() == pytest.approx([editor.entry_radius(k) for k in keys], rel=1e-5)
    balls = editor.key_record(model, tok, case)["distances"]["rewrites"]  # what --keys records per ball
    assert [b["radius"] for b in balls] == pytest.approx(book.radii[1:].tolist(), rel=1e-5)
    assert all(len(b["neighbours"]) == len(case.neighbours) for b in balls)
    result.restore()
    assert editor._own_wrapper(model, editor_path(model, editor)) is None
    none = get_editor("scope", preset="tiny", edit_rewrites=0)
    none.encoder, none.bank, none.scope = editor.encoder, editor.bank, editor.scope
    result = none.apply(model, tok, [case])
    assert len(result.info["codebook"]) == 1
    result.restore()


def editor_path(model, editor) -> str:
    from clmedit.models.arch import arch_of

    return arch_of(model).path("down_proj", editor.edit_layer(model))


def test_entry_scope_shrinks_near_a_known_key(fitted):
    _, _, editor, _ = fitted
    editor.scope = Scope(radius=10.0, gamma=0.5, inside=1.0, kept=1.0, cases=1)
    known = editor.bank[0]
    near = known + 0.02 * torch.randn_like(known) / known.norm()
    far = known + 1e3
    assert editor.entry_radius(near) == pytest.approx(max(1e-3, 0.5 * float((near - known).norm())), rel=1e-4)
    assert editor.entry_radius(far) == 10.0  # nothing known nearby: R
    editor.scope = Scope(radius=10.0, gamma=math.inf, inside=1.0, kept=1.0, cases=1)  # the no-bank ablation
    assert editor.entry_radius(near) == 10.0


def test_scope_refuses_a_folder_without_its_bank(fitted, tmp_path):
    _, _, editor, _ = fitted
    editor.save(tmp_path)
    (tmp_path / "bank.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="bank"):
        get_editor("scope", preset="tiny").load(tmp_path)
    with pytest.raises(RuntimeError, match="fit"):
        get_editor("scope", preset="tiny").entry_radius(torch.zeros(4))


def test_the_trained_part_is_written_whole_with_the_umask_s_permissions(fitted, tmp_path):
    """Encoder, bank and scope go through the atomic writer: no temporary file is left, and the
    files are as readable as the umask allows (safetensors alone writes 0600)."""
    _, _, editor, _ = fitted
    old = os.umask(0o022)
    try:
        editor.save(tmp_path)
    finally:
        os.umask(old)
    files = sorted(f.name for f in tmp_path.iterdir())
    assert files == ["bank.safetensors", "encoder.json", "encoder.safetensors", "scope.json"]
    assert {oct(f.stat().st_mode & 0o777) for f in tmp_path.iterdir()} == {oct(0o644)}


def test_scope_keys_can_read_the_mean_and_the_last_token_together(llama_tiny, tmp_path):
    model, tok = llama_tiny
    editor = get_editor("scope", preset="tiny", key_pool="mean+last", augment=False)
    editor.fit(model, tok, [make_case(i) for i in range(2, 8)])
    d_mlp = model.config.intermediate_size
    assert editor.encoder.config.d_in == 2 * d_mlp and editor.encoder.config.pool == "mean+last"
    case = make_case(0, target="sorted(xs, reverse=True)")
    want = target_ids(tok, case.prompt, case.target)
    result = editor.apply(model, tok, [case])
    assert greedy_ids(model, tok, case.prompt, len(want)) == want
    result.restore()
    editor.save(tmp_path)
    again = get_editor("scope", preset="tiny")  # key_pool None: the encoder says what it reads
    again.load(tmp_path)
    assert torch.equal(
        again.prompt_keys(model, tok, [case.prompt]), editor.prompt_keys(model, tok, [case.prompt])
    )
    with pytest.raises(ValueError, match="trained on 'mean\\+last' keys"):  # a fixed other pooling: refused
        get_editor("scope", preset="tiny", key_pool="mean").load(tmp_path)


def test_scope_pools_by_task_unless_told():
    editor = get_editor("scope", preset="tiny")
    assert editor.pool_for([make_case(0, task="cnle")]) == "mean"
    assert editor.pool_for([make_case(0, task="csne")]) == "mean+last"
    assert get_editor("scope", preset="tiny", key_pool="last").pool_for([make_case(0, task="csne")]) == "last"
