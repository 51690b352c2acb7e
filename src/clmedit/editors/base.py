"""The editor contract: apply edits, report their cost, and undo them exactly.

An editor is a validated hparams object plus `_apply`. `apply` measures wall seconds and
peak memory around `_apply` and returns an EditResult whose `restore()` makes every
parameter bitwise equal to what it was (and removes any module the editor wrapped in).
Editors keep copies of only the tensors they touch, never of the whole model.

Sequential (lifelong) editing applies many edits without restoring in between; an `EditSession`
absorbs each apply's EditResult and keeps, per saved tensor or state entry, only the earliest
copy (a `Snapshot` of what it was before the first edit), so memory does not grow by a weight
copy per edit; `EditSession.restore()` undoes every edit at once, bitwise.

The registry (a lazy name -> "module:Class" map with labels) lives in the torch-free
`editors.registry` and is re-exported here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from clmedit.config import EditorHParams, load_hparams
from clmedit.data.schema import EditCase
from clmedit.editors.registry import (  # noqa: F401  (re-exported: the registry's one home is registry.py)
    ALIASES,
    EDITORS,
    LABELS,
    canonical_name,
    editor_class,
    editor_label,
    editor_names,
    register_editor,
)
from clmedit.errors import InputError, NotSavableError
from clmedit.models.cost import CostMeter

Undo = Callable[[], None]


@dataclass
class EditResult:
    """What an edit did and how to undo it. `info` holds editor-specific facts (losses, keys, ...)."""

    undo: list[Undo] = field(default_factory=list)
    seconds: float = 0.0
    peak_bytes: int = 0  # the edit's own peak: above what the process held before it (the study's measure)
    resident_peak_bytes: int = 0  # the highest total during the edit (model included)
    info: dict[str, Any] = field(default_factory=dict)
    restored: bool = False

    def restore(self) -> None:
        """Undo the edit; afterwards the model is bitwise what it was before `apply`. Idempotent.

        A result absorbed by an `EditSession` has handed its undos over: restore the session.
        """
        if self.restored:
            return
        for fn in reversed(self.undo):
            fn()
        self.restored = True


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


def replace_module(model: nn.Module, path: str, new: nn.Module) -> Undo:
    """Put `new` at dotted `path`; the returned function puts the original back."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return lambda: setattr(parent, child, old)


class Editor(ABC):
    """Base of every editor. Subclasses set `name`, `HParams` and implement `_apply`.

    The contract (tests/test_conformance.py, tests/test_editor_contract.py):
      - `prepare(model, tok)`: one-off work for this model (statistics, ...) outside any timing;
        idempotent. The runner calls it once before the first case; `apply` calls it too.
      - `apply`: edits in place and returns an EditResult whose `restore()` undoes it bitwise.
        If `_apply` raises, every undo it registered so far runs (in reverse) and the error
        propagates: the model is then bitwise what it was.
      - `key_record(model, tok, case)`: keys and key distances for the report, or None.
      - trainable editors (`trainable = True`) implement `fit`, `save`, `load`; the others raise
        NotSavableError from `save`/`load`.
    """

    name: ClassVar[str]
    HParams: ClassVar[type[EditorHParams]] = EditorHParams
    trainable: ClassVar[bool] = False  # True: needs fit(train_cases) before apply (MALMEN, A-GRACE)

    def __init__(self, hparams: EditorHParams | None = None):
        self.hparams = hparams if hparams is not None else self.HParams()

    def prepare(self, model: nn.Module, tok: Any) -> None:
        """Load or compute what every edit of `model` needs (no-op here). Must be idempotent."""
        return None

    def apply(self, model: nn.Module, tok: Any, cases: list[EditCase]) -> EditResult:
        """Edit `model` so each case's prompt yields its target; measure the cost of `_apply` alone."""
        if not cases:
            raise InputError(f"{self.name}: apply needs at least one edit case")
        self.prepare(model, tok)
        device = next(model.parameters()).device
        result = EditResult()
        try:
            with CostMeter(device) as meter:
                self._apply(model, tok, cases, result)
        except BaseException:
            result.restore()
            raise
        result.seconds, result.peak_bytes = meter.seconds, meter.peak_bytes
        result.resident_peak_bytes = meter.resident_peak_bytes
        return result

    @abstractmethod
    def _apply(self, model: nn.Module, tok: Any, cases: list[EditCase], result: EditResult) -> None:
        """Edit in place. Append an undo to `result.undo` *before* each change it covers (so a
        failure later in `_apply` is undone too) and put editor-specific facts in `result.info`."""

    def key_record(self, model: nn.Module, tok: Any, case: EditCase) -> dict[str, Any] | None:
        """Keys and key distances of a case's prompt, rephrase and neighbours (None: no keys)."""
        return None

    # Trainable editors override these three.
    def fit(self, model: nn.Module, tok: Any, train_cases: list[EditCase], **kwargs: Any) -> dict[str, Any]:
        return {}

    def save(self, directory: str | Path) -> None:
        raise NotSavableError(f"{self.name} has no trained part to save")

    def load(self, directory: str | Path) -> None:
        raise NotSavableError(f"{self.name} has no trained part to load")


def get_editor(name: str, preset: str | None = None, **overrides: Any) -> Editor:
    """An editor by registry name, with hparams from defaults < preset (model name or YAML path) < overrides."""
    cls = editor_class(name)
    return cls(load_hparams(cls.HParams, cls.name, preset, **overrides))
