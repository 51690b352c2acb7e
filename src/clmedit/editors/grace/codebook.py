"""GRACE's discrete key-value codebook: entries (key k_i, value V_i, radius eps_i, label y_i).

A query q matches entry i iff d(q, k_i) <= eps_i; the nearest matching entry wins. Keys come
from any encoder (GRACE: the down_proj input at the last prompt token; A-GRACE: an MLP of the
mean prompt input): the codebook only needs vectors of one fixed width and a distance.

Insertion of a key k with label y (Hartvigsen et al., "Aging with GRACE", Sec. 3):
    nearest entry i at distance d
    d > eps_i + eps_init           -> add (k, ., eps_init, y)                     "added"
    else, y == y_i                 -> expand: eps_i = max(eps_i, d) ("coverage"),
                                      or k_i = (k_i + k) / 2 ("moving_average")   "expanded"
    else (conflict, y != y_i)      -> split: eps_i = d / 2, add (k, ., d / 2, y)   "split"
A value is a (S, d_out) tensor: one vector per output step (see editor.py for what a step is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from clmedit.locate.keys import Distance, key_distance

Expand = Literal["coverage", "moving_average"]


@dataclass
class Insertion:
    """What `Codebook.insert` did: the entry to (re)train and the operation's name."""

    index: int
    op: Literal["added", "expanded", "split"]
    distance: float | None  # to the nearest existing key (None for the first entry)


@dataclass(repr=False)
class Codebook:
    """Keys (N, d_key), radii (N,), labels, and values: one (S_i, d_out) tensor per entry."""

    eps_init: float = 1.0
    dist_fn: Distance = "euc"
    expand: Expand = "coverage"
    keys: torch.Tensor | None = None
    radii: torch.Tensor | None = None
    labels: list[str] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def _append(self, key: torch.Tensor, radius: float, label: str, value: torch.Tensor) -> int:
        key = key.detach().reshape(1, -1)
        radius_t = torch.tensor([radius], dtype=torch.float32, device=key.device)
        self.keys = key if self.keys is None else torch.cat([self.keys, key])
        self.radii = radius_t if self.radii is None else torch.cat([self.radii, radius_t])
        self.labels.append(label)
        self.values.append(value.detach())
        return len(self) - 1

    def insert(
        self, key: torch.Tensor, label: str, value: torch.Tensor, radius: float | None = None
    ) -> Insertion:
        """Insert key (d_key,) for `label`; `value` initialises a new entry (expansion keeps the old).

        `radius`: a new entry's own radius (default `eps_init`), e.g. one fitted to what is known
        to lie near the key; a split still halves it to the conflicting key's distance.
        """
        eps = self.eps_init if radius is None else radius
        if self.keys is None:
            return Insertion(self._append(key, eps, label, value), "added", None)
        d = key_distance(key.reshape(1, -1), self.keys, self.dist_fn)[0]
        i = int(d.argmin())
        dist = float(d[i])
        if dist > float(self.radii[i]) + self.eps_init:
            return Insertion(self._append(key, eps, label, value), "added", dist)
        if label == self.labels[i]:
            if self.expand == "coverage":
                self.radii[i] = max(float(self.radii[i]), dist)
            else:
                self.keys[i] = (self.keys[i] + key.to(self.keys.dtype)) / 2
            return Insertion(i, "expanded", dist)
        self.radii[i] = dist / 2
        half = dist / 2 if radius is None else min(radius, dist / 2)
        return Insertion(self._append(key, half, label, value), "split", dist)

    def lookup(self, queries: torch.Tensor, nearest_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """For queries (B, d_key): (index (B,) of the nearest entry whose radius covers it, else -1;
        distance (B,) to the nearest key, inf when the codebook is empty). `nearest_only`: only
        the nearest key counts (EasyEdit's GRACE: no match when it does not cover the query)."""
        b = queries.shape[0]
        if self.keys is None:
            return (
                torch.full((b,), -1, dtype=torch.long, device=queries.device),
                torch.full((b,), float("inf"), device=queries.device),
            )
        d = key_distance(queries, self.keys.to(queries.device), self.dist_fn)  # (B, N)
        inside = d <= self.radii.to(queries.device)
        if nearest_only:
            inside &= d == d.min(dim=1, keepdim=True).values
        masked = torch.where(inside, d, torch.full_like(d, float("inf")))
        best = masked.argmin(dim=1)
        index = torch.where(inside.any(dim=1), best, torch.full_like(best, -1))
        return index, d.min(dim=1).values

    def __repr__(self) -> str:
        width = None if self.keys is None else self.keys.shape[1]
        return f"Codebook({len(self)} entries, d_key={width}, dist={self.dist_fn}, eps_init={self.eps_init})"

    def set_value(self, index: int, value: torch.Tensor) -> None:
        self.values[index] = value.detach()
