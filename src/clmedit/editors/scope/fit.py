"""SCOPE's training-side math: hard negatives, and each entry's scope chosen on held-out training cases.

An entry's scope is the radius it answers within:

    scope(k) = min(R, gamma * b(k))       b(k): distance from k to the nearest *known* non-matching key

where the known keys (the "bank") are the encoded training prompts, rephrases and neighbours, and the
data's unprobed inputs (inputs no case is scored on: data.unprobed), when it has them. A key in
a crowded region gets a small scope, one far from everything known a wide one (up to R). R and gamma
are picked on validation cases of the training data. By default (`kept_target` None) they maximise
inside + kept: the share of validation rephrases inside plus the share of validation cases that keep
all their neighbours outside (Youden's J: generalising and keeping neighbours weigh the same, as a
threshold is chosen when neither error is preferred). A user who needs a level of specificity sets
`kept_target`: then the widest scopes under which at least that share keeps its neighbours out.
gamma = inf is "no bank" (one radius R for every entry). An edit with rewrite keys is the union of
several such balls: its rephrase is in when any ball covers it, and it keeps its neighbours when no
ball holds one.

The validation follows the runner's probe-disjoint protocol inside the training data: the known keys
and the negatives a validation split is scored with hold no input that is a probe of its validation
cases (`unprobed_rows`), just as the test fold's probes are never in the bank. Validation cases keep
fewer neighbours than a scored case has (those that were test probes were removed), so their *kept*
is the share of cases with every observed neighbour out, times the chance that each missing one would
be out too, at the rate the observed neighbours are (`expected` neighbours per scored case).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clmedit.data.schema import probe_texts

if TYPE_CHECKING:
    from clmedit.editors.agrace.editor import TrainingFeatures

GAMMAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.35, 1.5, math.inf)
SAME = 1e-6  # a bank key this close to the query is the query's own text, not a neighbour of it


@dataclass(frozen=True)
class Scope:
    """The chosen (R, gamma) and what they gave on the validation cases."""

    radius: float
    gamma: float
    inside: float  # share of validation rephrases within their prompt's scope
    kept: float  # share of validation cases whose every neighbour is outside it
    cases: int

    def of(self, bank_distance: torch.Tensor) -> torch.Tensor:
        """Scopes for keys whose nearest known non-matching key lies at `bank_distance`."""
        return (self.gamma * bank_distance).clamp(max=self.radius)


def nearest_known(keys: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(N,) distance from each key (N, d) to its nearest bank key (M, d), ignoring its own copy."""
    if bank.numel() == 0:
        return torch.full((len(keys),), math.inf)
    d = torch.cdist(keys.float(), bank.float())
    return d.masked_fill(d <= SAME, math.inf).min(dim=1).values


def hard_negatives(
    prompts: torch.Tensor, pool: torch.Tensor, k: int, extra: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` most similar candidates of every prompt: the other prompts of `pool` (indices into
    `prompts`) and the rows of `extra` (texts that are no case's, indexed after the N prompts).

    Similarity: cosine of the features standardised over the candidates. Returns (candidate index
    into cat(prompts, extra) (N*k,), owner (N*k,)).
    """
    n = len(prompts)
    x = prompts.float() if extra is None else torch.cat([prompts, extra]).float()
    if extra is not None:
        pool = torch.cat([pool, torch.arange(n, len(x))])
    if k <= 0 or len(pool) < 2:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    x = torch.nn.functional.normalize((x - x[pool].mean(0)) / x[pool].std(0).clamp_min(1e-6), dim=1)
    is_self = torch.arange(n).unsqueeze(1) == pool.unsqueeze(0)
    sim = (x[:n] @ x[pool].T).masked_fill(is_self, -math.inf)  # (N, |pool|)
    k = min(k, len(pool) - 1)
    top = sim.topk(k, dim=1).indices
    return pool[top].reshape(-1), torch.arange(n).repeat_interleave(k)


@dataclass(frozen=True)
class Known:
    """Which training inputs (rows of anchor, positive, neighbours, and the unprobed texts) a
    validation split may know: those that are no probe of its validation cases. A case whose prompt
    or rephrase is one is dropped whole."""

    anchor: torch.Tensor  # (N,) bool
    neighbours: torch.Tensor  # (M,) bool
    unprobed: torch.Tensor  # (C,) bool


def unprobed_rows(data: TrainingFeatures, val: torch.Tensor, unprobed: Sequence[str] = ()) -> Known:
    """The inputs of `data` (and of the `unprobed` texts) that are no probe of the validation cases
    `val` (the runner's rule)."""
    probes = probe_texts(data.cases[i] for i in val.tolist())
    whole = torch.tensor([c.prompt not in probes and c.rephrase not in probes for c in data.cases])
    texts = [n.prompt for c in data.cases for n in c.neighbours]  # the rows of data.neighbours
    neighbours = torch.tensor([t not in probes for t in texts], dtype=torch.bool) & whole[data.owner]
    return Known(whole, neighbours, torch.tensor([t not in probes for t in unprobed], dtype=torch.bool))


def rank(inside: float, kept: float, kept_target: float | None) -> tuple:
    """How a scope is judged on validation, the larger the better; ties go to the one keeping more.

    `kept_target` None: inside + kept (no preference between the two errors). A share: the most
    inside among scopes that keep at least `kept_target`; short of it, the most kept.
    """
    if kept_target is None:
        return (round(inside + kept, 9), kept)  # rounded: equal counts must tie despite float sums
    met = kept >= kept_target
    return (met, inside if met else kept, kept)


def choose_scope(
    positive: torch.Tensor, neighbours: torch.Tensor, bank: torch.Tensor, kept_target: float | None,
    gammas: tuple[float, ...] = GAMMAS, radius: float | None = None, expected: int | None = None,
) -> Scope:  # fmt: skip
    """Pick (R, gamma) on validation cases whose edits are unions of J balls (J = 1: the prompt's key
    alone), the best by `rank`.

    Per validation case and ball: positive (V, J) centre -> rephrase distance; neighbours (V, J, K)
    centre -> neighbour distances (inf where a case has fewer); bank (V, J) centre -> nearest known
    key. 1-D positive / bank and 2-D neighbours are one ball. A case's rephrase is inside when any
    ball covers it (d <= scope, as the codebook matches); it keeps its neighbours when no ball holds
    one (d > scope). Absent balls are inf in all three. `radius`: R fixed instead of chosen.
    `expected`: the neighbours a scored case has; a case with fewer counts as kept with the chance
    that its missing ones are all out (`kept_share`).
    """
    if positive.ndim == 1:
        positive, neighbours, bank = positive[:, None], neighbours[:, None], bank[:, None]
    # the widest useful radii: each rephrase distance (matching is d <= scope), and 0 / unbounded
    ends = torch.tensor([0.0, math.inf])
    finite = positive[positive.isfinite()]
    radii = torch.unique(torch.cat([finite, ends])) if radius is None else torch.tensor([radius])
    nb_min = neighbours.min(dim=2).values  # (V, J)
    best: tuple[tuple, Scope] | None = None
    for gamma in gammas:
        scope = (gamma * bank).unsqueeze(0).clamp(max=radii[:, None, None])  # (R, V, J)
        inside = (positive.unsqueeze(0) <= scope).any(2).float().mean(1)
        kept = kept_share(neighbours, nb_min, scope, expected)
        for i in range(len(radii)):
            score = rank(float(inside[i]), float(kept[i]), kept_target)
            if best is None or score > best[0]:
                best = (score, Scope(float(radii[i]), gamma, float(inside[i]), float(kept[i]), len(positive)))
    assert best is not None
    return best[1]


def kept_share(
    neighbours: torch.Tensor, nb_min: torch.Tensor, scope: torch.Tensor, expected: int | None
) -> torch.Tensor:
    """(R,) share of validation cases keeping every neighbour out of its balls, per candidate scope
    (R, V, J); with `expected`, each case's share times (1 - p)^(missing neighbours), p being the
    share of all observed neighbours that some ball holds under that scope."""
    kept = (nb_min.unsqueeze(0) > scope).all(2).float()  # (R, V)
    if expected is None:
        return kept.mean(1)
    observed = neighbours[:, 0].isfinite()  # (V, K): the prompt's own ball sees every neighbour
    held = (neighbours.unsqueeze(0) <= scope.unsqueeze(-1)).any(2) & observed  # (R, V, K)
    p = held.sum((1, 2)).float() / observed.sum().clamp(min=1)
    missing = (expected - observed.sum(1)).clamp(min=0).float()  # (V,)
    return (kept * (1 - p[:, None]) ** missing[None]).mean(1)


@torch.no_grad()
def validation_distances(encoder, data: TrainingFeatures, val: torch.Tensor, train: torch.Tensor,
                          rewrites: tuple[torch.Tensor, torch.Tensor] | None = None,
                          known: Known | None = None, unprobed: torch.Tensor | None = None):  # fmt: skip
    """For the validation cases, per ball j (the prompt's key, then its rewrites' keys): (centre ->
    rephrase (V, J), centre -> neighbours (V, J, K), centre -> nearest key of the training split's
    prompts, rephrases and neighbours and of the `unprobed` texts' features that are `known`
    (default: all) (V, J)); inf where a case has fewer rewrites or neighbours."""
    centres = encoder(data.anchor[val]).unsqueeze(1)  # (V, 1, d_key)
    present = torch.ones(len(val), 1, dtype=torch.bool)
    if rewrites is not None:
        feats, exists = rewrites[0][val], rewrites[1][val]
        keys = encoder(feats.reshape(-1, feats.shape[-1])).reshape(len(val), feats.shape[1], -1)
        centres, present = torch.cat([centres, keys], 1), torch.cat([present, exists], 1)
    far = ~present
    positive = (centres - encoder(data.positive[val]).unsqueeze(1)).norm(dim=-1).masked_fill(far, math.inf)
    width = int(torch.bincount(data.owner).max())
    neighbours = torch.full((*centres.shape[:2], width), math.inf)
    for row, case in enumerate(val.tolist()):
        mine = encoder(data.neighbours[data.owner == case])
        neighbours[row, :, : len(mine)] = torch.cdist(centres[row], mine)
    neighbours = neighbours.masked_fill(far.unsqueeze(-1), math.inf)
    is_train = torch.zeros(len(data.anchor), dtype=torch.bool)
    is_train[train] = True
    in_train = is_train[data.owner]
    extra = unprobed if unprobed is not None else data.anchor[:0]
    if known is not None:
        is_train, in_train = is_train & known.anchor, in_train & known.neighbours
        extra = extra[known.unprobed] if len(extra) else extra
    bank = encoder(
        torch.cat([data.anchor[is_train], data.positive[is_train], data.neighbours[in_train], extra])
    )
    known = nearest_known(centres.reshape(-1, centres.shape[-1]), bank).reshape(centres.shape[:2])
    return positive, neighbours, known.masked_fill(far, math.inf)
