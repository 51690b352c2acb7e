"""Undo data that knows what it saved, and a session that undoes many applies at once.

A `Snapshot` is an undo holding saved values under keys (a tensor's identity, an entry of an
editor's state); `backup_weights` makes one for parameters. Sequential (lifelong) editing applies
many edits without restoring in between: an `EditSession` absorbs each apply's EditResult and keeps,
per key, only the earliest copy (the state before the first edit), so memory does not grow by a
weight copy per edit (MEMIT: five down_proj matrices, ~18 MB per edit on smollm2-135m), and
`EditSession.restore()` undoes every edit at once, bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from clmedit.editors.base import EditResult, Undo


class Snapshot:
    """An undo that puts saved values back: `saved[key]` is written back by `put(key, value)`.

    Keys name what was saved (a tensor, an entry of an editor's state) and are comparable across
    snapshots, so an `EditSession` can tell that a later snapshot saves something an earlier one
    already holds. Invariant: calling it restores exactly the saved values, whatever happened since.
    """

    def __init__(self, saved: dict[Hashable, Any], put: Callable[[Hashable, Any], None]):
        self.saved = saved
        self._put = put

    def __call__(self) -> None:
        for key, value in self.saved.items():
            self._put(key, value)

    def without(self, keys: Iterable[Hashable]) -> Snapshot | None:
        """This snapshot less the entries under `keys` (None when nothing is left)."""
        drop = set(keys)
        kept = {k: v for k, v in self.saved.items() if k not in drop}
        return Snapshot(kept, self._put) if kept else None


def _put_tensor(key: Hashable, value: tuple[torch.Tensor, torch.Tensor]) -> None:
    param, copy = value
    with torch.no_grad():
        param.copy_(copy)


def backup_weights(params: dict[str, torch.Tensor]) -> Snapshot:
    """Copy the given parameters now; calling the result writes the copies back in place.

    Keyed by the identity of each tensor (not by the name given here), so two editors' or two
    applies' backups of the same weight are recognised as the same thing. `saved` maps each key
    to (the live tensor, its copy).
    """
    return Snapshot({("tensor", id(p)): (p, p.detach().clone()) for p in params.values()}, _put_tensor)


class EditSession:
    """Edits applied one after another without restoring (lifelong editing), undone together.

    `absorb(result)` takes over an apply's undos: a `Snapshot` entry whose key an earlier absorbed
    result already saved is dropped (the earlier copy is the state before the first edit, the one
    a full restore needs), so N applies that touch the same weights hold one copy of each, not N;
    every other undo (module wrappers, hooks, editor state) is kept in order. `restore()` runs the
    kept undos last-in, first-out; afterwards the model (and the editors' state) is bitwise what
    it was before the first absorbed apply.

    Why dropping is exact: a snapshot restores absolute values, and the earliest one runs after
    every later undo; the undos that are not snapshots must not depend on the saved values (true
    of `replace_module`, hook removal and editor bookkeeping).
    """

    def __init__(self) -> None:
        self.undo: list[Undo] = []
        self._saved: set[Hashable] = set()
        self.restored = False

    @property
    def saved(self) -> frozenset[Hashable]:
        """The keys of the tensors / state entries the session holds one copy of (`Snapshot` keys)."""
        return frozenset(self._saved)

    def absorb(self, result: EditResult) -> None:
        """Own `result`'s undos (dropping copies already held); `result.restore()` is then a no-op."""
        if result.restored:
            raise ValueError("this EditResult was restored already: there is nothing to absorb")
        if self.restored:
            raise ValueError("this EditSession was restored: start a new session for new edits")
        for fn in result.undo:
            if isinstance(fn, Snapshot):
                fn = fn.without(self._saved)
                if fn is None:
                    continue
                self._saved.update(fn.saved)
            self.undo.append(fn)
        result.undo, result.restored = [], True

    def restore(self) -> None:
        """Undo every absorbed edit, last first. Idempotent."""
        if self.restored:
            return
        while self.undo:
            self.undo.pop()()
        self._saved.clear()
        self.restored = True
