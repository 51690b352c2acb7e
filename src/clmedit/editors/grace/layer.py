"""The GRACE wrapper around a down_proj: codebook lookup at prefill, per-row values while decoding.

`GraceLayer(inner, codebook, key_fn, decode)` computes out = inner(x) and, for rows whose prefill
key matched a codebook entry, replaces out at the key token by value step 0. At decoded tokens:
    decode="steps"   the k-th decoded token of a matched row gets value step k (while the value
                     has steps)                                              (ours)
    decode="lookup"  each decoded token is looked up with its *own* key (key_fn over that one
                     token); inside the nearest entry's ball it gets that entry's value
                     (EasyEdit GRACE's replace_last under a KV cache, the study's GRACE)
    decode="none"    decoded tokens are never touched (the study's A-GRACE)
Unmatched rows and tokens are returned untouched (bitwise). How a call is classified, per the
model forward pre-hook `observe` (models.hooks.CallObserver):
    KV cache with past length > 0           -> continuation: the new tokens are the next steps
    no cache, longer than the last call and
    the same input at the key positions     -> recomputation (generate(use_cache=False))
    anything else                           -> a new prefill: per-row state is reset
See editor.py for why values are per-step and how they are trained.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from clmedit.editors.grace.codebook import Codebook
from clmedit.models.hooks import CallObserver
from clmedit.models.text import call_mask, gather_rows, last_position

KeyFn = Any  # Callable[[Tensor (B, T, d_in), Tensor (B, T) bool], Tensor (B, d_key)]
Decode = Literal["steps", "lookup", "none"]


class GraceLayer(CallObserver, nn.Module):
    """Wraps a down_proj: out = inner(x), with matched rows' outputs replaced by codebook values.

    State per row (reset at each prefill): the matched entry (-1: none), the key position and
    how many steps have been decoded. `enabled=False` makes it a pure pass-through.
    """

    def __init__(self, inner: nn.Module, codebook: Codebook, key_fn: KeyFn, decode: Decode = "steps"):
        super().__init__()
        self.inner = inner
        self.codebook = codebook
        self.key_fn = key_fn
        self.decode = decode
        self.enabled = True
        self._rows: torch.Tensor | None = None  # (B,) matched entry per row
        self._pos: torch.Tensor | None = None  # (B,) key position per row
        self._anchor: torch.Tensor | None = None  # (B, d_in) input at the key positions
        self._steps = 0  # tokens decoded since the prefill (KV-cache mode)
        self._length = 0  # sequence length at the last call

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        out = self.inner(x)
        call = self.take_call()
        if not self.enabled or len(self.codebook) == 0:
            return out
        b, t = x.shape[:2]
        past = call["past"] if call else 0
        if self._rows is not None and self._rows.numel() == b:
            if past > 0 or (call is None and t == 1):  # KV cache: t new tokens after the prefill
                return self._continue_cached(x, out)
            if past == 0 and t > self._length and self._same_prefix(x):  # no cache: recomputation
                return self._continue_recomputed(x, out)
        return self._prefill(x, out, call)

    @torch.no_grad()
    def _prefill(self, x: torch.Tensor, out: torch.Tensor, call: dict | None) -> torch.Tensor:
        b, t = x.shape[:2]
        prompt_mask = call_mask(call.get("mask") if call else None, b, t, x.device)
        rows, _ = self.codebook.lookup(self.key_fn(x, prompt_mask))
        pos = last_position(prompt_mask)
        self._rows, self._pos, self._steps, self._length = rows, pos, 0, t
        self._anchor = gather_rows(x, pos).clone()
        return self._write(out, [(r, int(pos[r]), 0) for r in range(b)])

    def _continue_cached(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        t = out.shape[1]
        todo = [(r, j, self._steps + 1 + j) for r in range(out.shape[0]) for j in range(t)]
        self._steps += t
        self._length += t
        if self.decode == "lookup":
            return self._write_looked_up(x, out, range(t))
        return self._write(out, todo if self.decode == "steps" else [])

    def _continue_recomputed(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        t = out.shape[1]
        self._length = t
        todo = [
            (r, p, p - int(self._pos[r])) for r in range(out.shape[0]) for p in range(int(self._pos[r]), t)
        ]
        if self.decode == "steps":
            return self._write(out, todo)
        out = self._write(out, [(r, int(self._pos[r]), 0) for r in range(out.shape[0])])
        if self.decode == "lookup":  # every position after the prompt is a decoded token
            return self._write_looked_up(x, out, range(int(self._pos.min()) + 1, t), after=self._pos)
        return out

    @torch.no_grad()
    def _write_looked_up(self, x: torch.Tensor, out: torch.Tensor, positions, after=None) -> torch.Tensor:
        """Replace out at each decoded position whose own key lies in its nearest entry's ball."""
        one = torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
        edits = []
        for position in positions:
            entries, _ = self.codebook.lookup(
                self.key_fn(x[:, position : position + 1], one), nearest_only=True
            )
            for row in range(x.shape[0]):
                entry = int(entries[row])
                if entry >= 0 and (after is None or position > int(after[row])):
                    edits.append((row, position, self.codebook.values[entry][0]))
        return _replaced(out, edits)

    def _same_prefix(self, x: torch.Tensor) -> bool:
        if x.shape[1] <= int(self._pos.max()):
            return False
        now = gather_rows(x, self._pos)
        return torch.allclose(now, self._anchor, rtol=1e-4, atol=1e-5)

    def _write(self, out: torch.Tensor, todo: list[tuple[int, int, int]]) -> torch.Tensor:
        """Replace out[row, position] by value step `step` of the row's entry, where one exists."""
        edits = []
        for row, position, step in todo:
            entry = int(self._rows[row])
            if entry >= 0 and step < self.codebook.values[entry].shape[0]:
                edits.append((row, position, self.codebook.values[entry][step]))
        return _replaced(out, edits)


def _replaced(out: torch.Tensor, edits: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
    """`out` with out[row, position] := value for each edit (a copy; `out` itself when there is none)."""
    if not edits:
        return out
    out = out.clone()
    for row, position, value in edits:
        out[row, position] = value.to(out.dtype)
    return out
