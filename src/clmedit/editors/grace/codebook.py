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

`add` appends an entry unconditionally: a further key for one edit (a union of balls, one value).

Lifelong use: `checkpoint()` opens a record of one apply's changes; `insert` and `set_value` given
it note each existing entry's (key, radius, value) before its first change, and `rollback` puts
those back and drops the entries added since. Checkpoints must be rolled back last-in-first-out
(checked by size); each costs what its apply touched, never a copy of the whole codebook.

As data (`state` / `from_state`, what a fix file stores): tensors keys (N, d_key), radii (N,),
values (sum of steps, d_out): every entry's value, one after another, entry i taking steps[i] rows
(steps (N,)); JSON labels and settings. `from_state(*book.state())` is the same codebook, bitwise.
Values used to be stored padded, (N, S_max, d_out) with zeros past each entry's steps, so one entry
with a long target sized every entry; that form is still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from clmedit.locate.keys import Distance, key_distance

Expand = Literal["coverage", "moving_average"]


@dataclass
class Insertion:
    """What `Codebook.insert` did: the entry to (re)train and the operation's name."""

    index: int
    op: Literal["added", "expanded", "split"]
    distance: float | None  # to the nearest existing key (None for the first entry)


@dataclass
class Checkpoint:
    """What one apply changed in a codebook: enough to undo it exactly (`Codebook.rollback`)."""

    size: int  # entries before the apply
    added: int = 0  # entries appended since
    old: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # ^ existing entry -> (key row, radius, value) as they were before its first change


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

    def checkpoint(self) -> Checkpoint:
        """Start recording one apply's changes (pass the result to `insert` / `set_value`)."""
        return Checkpoint(size=len(self))

    def _note(self, index: int, change: Checkpoint | None) -> None:
        """Remember entry `index` as it is now, before the first change `change` makes to it."""
        if change is not None and index < change.size and index not in change.old:
            assert self.keys is not None and self.radii is not None
            change.old[index] = (self.keys[index].clone(), self.radii[index].clone(), self.values[index])

    def rollback(self, change: Checkpoint) -> None:
        """Undo exactly what was recorded in `change`: the codebook is then bitwise what it was.

        Raises RuntimeError when a later checkpoint is still applied (undo last-in-first-out).
        """
        if len(self) != change.size + change.added:
            raise RuntimeError(
                f"codebook has {len(self)} entries, but this edit left it with {change.size + change.added}: "
                "a later edit of the same layer is still applied; restore edits last-in-first-out"
            )
        for index, (key, radius, value) in change.old.items():
            self.keys[index] = key
            self.radii[index] = radius
            self.values[index] = value
        n = change.size
        self.keys = self.keys[:n] if n else None
        self.radii = self.radii[:n] if n else None
        del self.labels[n:], self.values[n:]
        change.added, change.old = 0, {}

    def add(
        self, key: torch.Tensor, radius: float, label: str, value: torch.Tensor, change: Checkpoint | None = None
    ) -> int:
        """Append an entry as given, whatever lies near it (no expansion, no split); its index.

        For a second key of an entry already inserted (SCOPE's rewrites of the edited prompt): it
        shares that entry's label and value and widens what the edit covers by one more ball.
        """
        if change is not None:
            change.added += 1
        key = key.detach().reshape(1, -1).clone()  # never a view of the caller's tensor
        radius_t = torch.tensor([radius], dtype=torch.float32, device=key.device)
        self.keys = key if self.keys is None else torch.cat([self.keys, key])
        self.radii = radius_t if self.radii is None else torch.cat([self.radii, radius_t])
        self.labels.append(label)
        self.values.append(value.detach())
        return len(self) - 1

    def insert(
        self,
        key: torch.Tensor,
        label: str,
        value: torch.Tensor,
        radius: float | None = None,
        change: Checkpoint | None = None,
    ) -> Insertion:
        """Insert key (d_key,) for `label`; `value` initialises a new entry (expansion keeps the old).

        `radius`: a new entry's own radius (default `eps_init`), e.g. one fitted to what is known
        to lie near the key; a split still halves it to the conflicting key's distance.
        `change`: the apply's checkpoint, which records what this insertion changes.
        """
        eps = self.eps_init if radius is None else radius
        if self.keys is None:
            return Insertion(self.add(key, eps, label, value, change), "added", None)
        d = key_distance(key.reshape(1, -1), self.keys, self.dist_fn)[0]
        i = int(d.argmin())
        dist = float(d[i])
        if dist > float(self.radii[i]) + self.eps_init:
            return Insertion(self.add(key, eps, label, value, change), "added", dist)
        self._note(i, change)
        if label == self.labels[i]:
            if self.expand == "coverage":
                self.radii[i] = max(float(self.radii[i]), dist)
            else:
                self.keys[i] = (self.keys[i] + key.to(self.keys.dtype)) / 2
            return Insertion(i, "expanded", dist)
        self.radii[i] = dist / 2
        half = dist / 2 if radius is None else min(radius, dist / 2)
        return Insertion(self.add(key, half, label, value, change), "split", dist)

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

    def set_value(self, index: int, value: torch.Tensor, change: Checkpoint | None = None) -> None:
        self._note(index, change)
        self.values[index] = value.detach()

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors on the CPU, JSON-able settings and labels): the whole codebook as data."""
        meta: dict[str, Any] = {
            "eps_init": self.eps_init, "dist_fn": self.dist_fn, "expand": self.expand, "labels": list(self.labels),
        }  # fmt: skip
        if len(self) == 0:
            return {}, meta
        steps = torch.tensor([v.shape[0] for v in self.values], dtype=torch.long)
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in (("keys", self.keys), ("radii", self.radii))}
        tensors["values"] = torch.cat(self.values).detach().cpu()  # a new tensor, packed: entry i is its steps[i] rows
        tensors["steps"] = steps
        return tensors, meta

    @classmethod
    def from_state(
        cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device | str = "cpu"
    ) -> Codebook:
        """The codebook `state` described, on `device`; ValueError says what does not fit."""
        labels = meta.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("its labels are not a list of strings")
        eps, dist_fn, expand = meta.get("eps_init"), meta.get("dist_fn"), meta.get("expand")
        if not isinstance(eps, (int, float)) or eps <= 0:
            raise ValueError(f"eps_init {eps!r} is not a positive number")
        if dist_fn not in get_args(Distance) or expand not in get_args(Expand):
            raise ValueError(f"unknown distance {dist_fn!r} or expansion {expand!r}")
        book = cls(eps_init=float(eps), dist_fn=dist_fn, expand=expand)
        n = len(labels)
        want = {"keys", "radii", "values", "steps"} if n else set()
        if set(tensors) != want:
            raise ValueError(f"it holds tensors {sorted(tensors)} where {n} entries need {sorted(want)}")
        if n == 0:
            return book
        keys, radii, values, steps = (tensors[k] for k in ("keys", "radii", "values", "steps"))
        padded = values.ndim == 3  # the earlier layout, (N, S_max, d_out)
        if (
            keys.ndim != 2 or keys.shape[0] != n or radii.shape != (n,) or values.ndim not in (2, 3)
            or (padded and values.shape[0] != n) or steps.shape != (n,) or steps.dtype != torch.long
            or not keys.is_floating_point() or not radii.is_floating_point() or not values.is_floating_point()
        ):  # fmt: skip
            raise ValueError(
                f"shapes do not fit {n} entries: keys {tuple(keys.shape)}, radii {tuple(radii.shape)}, "
                f"values {tuple(values.shape)}, steps {tuple(steps.shape)} {steps.dtype}"
            )
        if int(steps.min()) < 1 or (padded and int(steps.max()) > values.shape[1]):
            raise ValueError(f"step counts {steps.tolist()[:5]}... fall outside 1..{values.shape[1]}")
        if not padded and int(steps.sum()) != values.shape[0]:
            raise ValueError(f"step counts sum to {int(steps.sum())}, but the values hold {values.shape[0]} rows")
        book.keys, book.radii = keys.to(device).clone(), radii.to(device).clone()
        book.labels = list(labels)
        if padded:
            book.values = [values[i, : int(s)].to(device).clone() for i, s in enumerate(steps)]
        else:
            book.values = [v.to(device).clone() for v in torch.split(values, steps.tolist())]
        return book
