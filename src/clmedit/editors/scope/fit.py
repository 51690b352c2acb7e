"""SCOPE's training-side math: hard negatives, and each entry's scope chosen on held-out training cases.

An entry's scope is the radius it answers within:

    scope(k) = min(R, gamma * b(k))       b(k): distance from k to the nearest *known* non-matching key

where the known keys (the "bank") are the encoded training prompts, rephrases and neighbours. A key in
a crowded region gets a small scope, one far from everything known a wide one (up to R). R and gamma
are picked on validation cases of the training data: the widest scopes under which at least
`kept_target` of the validation cases keep all their neighbours outside, maximising the share of
rephrases inside. gamma = inf is "no bank" (one radius R for every entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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


def hard_negatives(prompts: torch.Tensor, pool: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` most similar other prompts of `pool` (indices into `prompts`) for every prompt.

    Similarity: cosine of the standardised features. Returns (negative index (N*k,), owner (N*k,)).
    """
    if k <= 0 or len(pool) < 2:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    x = prompts.float()
    x = torch.nn.functional.normalize((x - x[pool].mean(0)) / x[pool].std(0).clamp_min(1e-6), dim=1)
    is_self = torch.arange(len(x)).unsqueeze(1) == pool.unsqueeze(0)
    sim = (x @ x[pool].T).masked_fill(is_self, -math.inf)  # (N, |pool|)
    k = min(k, len(pool) - 1)
    top = sim.topk(k, dim=1).indices
    return pool[top].reshape(-1), torch.arange(len(x)).repeat_interleave(k)


def choose_scope(
    positive: torch.Tensor, neighbours: torch.Tensor, bank: torch.Tensor, kept_target: float,
    gammas: tuple[float, ...] = GAMMAS, radius: float | None = None,
) -> Scope:  # fmt: skip
    """Pick (R, gamma) on validation cases.

    positive (V,): prompt -> rephrase distance; neighbours (V, K): prompt -> neighbour distances
    (inf where a case has fewer); bank (V,): prompt -> nearest known key. The scope must cover the
    rephrase (d <= scope, as the codebook matches) and leave every neighbour outside (d > scope).
    `radius`: R fixed instead of chosen.
    """
    # the widest useful radii: each rephrase distance (matching is d <= scope), and 0 / unbounded
    ends = torch.tensor([0.0, math.inf])
    radii = torch.unique(torch.cat([positive, ends])) if radius is None else torch.tensor([radius])
    nb_min = neighbours.min(dim=1).values
    best: tuple[tuple, Scope] | None = None
    for gamma in gammas:
        scope = (gamma * bank).unsqueeze(0).clamp(max=radii.unsqueeze(1))  # (R, V)
        inside = (positive.unsqueeze(0) <= scope).float().mean(1)
        kept = (nb_min.unsqueeze(0) > scope).float().mean(1)
        for i in range(len(radii)):
            score = (bool(kept[i] >= kept_target), float(inside[i]) if kept[i] >= kept_target else float(kept[i]),
                     float(kept[i]))  # fmt: skip
            if best is None or score > best[0]:
                best = (score, Scope(float(radii[i]), gamma, float(inside[i]), float(kept[i]), len(positive)))
    assert best is not None
    return best[1]
