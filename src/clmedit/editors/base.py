"""The editor contract: apply edits, report their cost, and undo them exactly.

An editor is a validated hparams object plus `_apply`. `apply` measures wall seconds and
peak memory around `_apply` and returns an EditResult whose `restore()` makes every
parameter bitwise equal to what it was (and removes any module the editor wrapped in).
Editors keep copies of only the tensors they touch, never of the whole model.

The registry (a lazy name -> "module:Class" map with labels) lives in the torch-free
`editors.registry` and is re-exported here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
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
        """Undo the edit; afterwards the model is bitwise what it was before `apply`. Idempotent."""
        if self.restored:
            return
        for fn in reversed(self.undo):
            fn()
        self.restored = True


def backup_weights(params: dict[str, torch.Tensor]) -> Undo:
    """Copy the given parameters now; the returned function writes the copies back in place."""
    saved = {name: p.detach().clone() for name, p in params.items()}

    def undo() -> None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])

    return undo


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
