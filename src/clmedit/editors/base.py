"""The editor contract: apply edits, report their cost, and undo them exactly.

An editor is a validated hparams object plus `_apply`. `apply` measures wall seconds and
peak memory around `_apply` and returns an EditResult whose `restore()` makes every
parameter bitwise equal to what it was (and removes any module the editor wrapped in).
Editors keep copies of only the tensors they touch, never of the whole model.

The registry is a lazy name -> "module:Class" map, so listing editors imports no editor.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from clmedit.config import EditorHParams, load_hparams
from clmedit.data.schema import EditCase
from clmedit.models.cost import CostMeter

Undo = Callable[[], None]


@dataclass
class EditResult:
    """What an edit did and how to undo it. `info` holds editor-specific facts (losses, keys, ...)."""

    undo: list[Undo] = field(default_factory=list)
    seconds: float = 0.0
    peak_bytes: int = 0
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
    """Base of every editor. Subclasses set `name`, `HParams` and implement `_apply`."""

    name: ClassVar[str]
    HParams: ClassVar[type[EditorHParams]] = EditorHParams
    trainable: ClassVar[bool] = False  # True: needs fit(train_cases) before apply (MALMEN, A-GRACE)

    def __init__(self, hparams: EditorHParams | None = None):
        self.hparams = hparams if hparams is not None else self.HParams()

    def apply(self, model: nn.Module, tok: Any, cases: list[EditCase]) -> EditResult:
        """Edit `model` so each case's prompt yields its target; measure the cost of doing so."""
        if not cases:
            raise ValueError(f"{self.name}: apply needs at least one edit case")
        device = next(model.parameters()).device
        with CostMeter(device) as meter:
            result = self._apply(model, tok, cases)
        result.seconds, result.peak_bytes = meter.seconds, meter.peak_bytes
        return result

    @abstractmethod
    def _apply(self, model: nn.Module, tok: Any, cases: list[EditCase]) -> EditResult: ...

    # Trainable editors override these three.
    def fit(self, model: nn.Module, tok: Any, train_cases: list[EditCase], **kwargs: Any) -> dict[str, Any]:
        return {}

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError(f"{self.name} has no trained part to save")

    def load(self, directory: str | Path) -> None:
        raise NotImplementedError(f"{self.name} has no trained part to load")


# name -> "module:Class"; editors are imported only when asked for.
EDITORS: dict[str, str] = {
    "none": "clmedit.editors.none:NoEdit",
    "ft": "clmedit.editors.ft:FineTune",
    "grace": "clmedit.editors.grace.editor:Grace",
    "rome": "clmedit.editors.rome:Rome",
    "memit": "clmedit.editors.memit:Memit",
    "pmet": "clmedit.editors.pmet:Pmet",
    "malmen": "clmedit.editors.malmen.editor:Malmen",
    "agrace": "clmedit.editors.agrace.editor:AGrace",
    "agrace-no-cl": "clmedit.editors.agrace.editor:AGraceNoCL",
    "agrace-last": "clmedit.editors.agrace.editor:AGraceLast",
    "wise": "clmedit.editors.wise.editor:Wise",
}
ALIASES: dict[str, str] = {"ft-l": "ft", "ftl": "ft", "a-grace": "agrace"}


def register_editor(name: str, target: str, aliases: tuple[str, ...] = ()) -> None:
    """Add an editor to the registry, e.g. register_editor('myedit', 'mypkg.edit:MyEditor')."""
    EDITORS[name] = target
    for alias in aliases:
        ALIASES[alias] = name


def editor_names() -> list[str]:
    return sorted(EDITORS)


def editor_class(name: str) -> type[Editor]:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in EDITORS:
        raise KeyError(f"unknown editor {name!r}; available: {', '.join(editor_names())}")
    module, _, cls = EDITORS[key].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_editor(name: str, preset: str | None = None, **overrides: Any) -> Editor:
    """An editor by registry name, with hparams from defaults < preset (model name or YAML path) < overrides."""
    cls = editor_class(name)
    return cls(load_hparams(cls.HParams, cls.name, preset, **overrides))
