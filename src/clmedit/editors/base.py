"""The editor contract: apply edits, report their cost, and undo them exactly.

An editor is a validated hparams object plus `_apply`. `apply` measures wall seconds and
peak memory around `_apply` and returns an EditResult whose `restore()` makes every
parameter bitwise equal to what it was (and removes any module the editor wrapped in).
Editors keep copies of only the tensors they touch, never of the whole model.

Weight backups (`backup_weights`) are keyed `Snapshot`s, so a sequential (lifelong) run's
`EditSession` keeps one copy of each touched tensor however many applies touch it
(editors/session.py).

An edit is also data (`EditState`): `edit_state(model)` captures the edit an editor has made,
`load_edit(model, tok, state)` rebuilds it on the unedited model without any training. That is
what fix files store (fixes/artifact.py). The default is a weight editor's: the new values of the
parameters it may change (`edited_parameters`); editors that wrap modules override both.

The registry (a lazy name -> "module:Class" map with labels) lives in the torch-free
`editors.registry` and is re-exported here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from clmedit.config import EditorHParams, load_hparams
from clmedit.data.schema import EditCase, EditRequest, as_request
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
from clmedit.editors.session import EditSession, Snapshot, backup_weights  # noqa: F401 (re-exported)
from clmedit.errors import InputError, IntegrityError, NotSavableError
from clmedit.models.arch import arch_of
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


@dataclass
class EditState:
    """An edit as data, what a fix file stores: named tensors and JSON-able `meta`.

    Made by `Editor.edit_state(model)`; `Editor.load_edit(model, tok, state)` rebuilds the edit
    from it alone. Tensor names and meta keys are the editor's own (the weight default: full
    parameter names, no meta).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@contextmanager
def undone_on_error(result: EditResult) -> Iterator[None]:
    """If the body raises, run every undo `result` holds so far (in reverse), then re-raise."""
    try:
        yield
    except BaseException:
        result.restore()
        raise


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
        It is the one boundary between cases and editors: it takes EditCases or EditRequests and
        hands `_apply` requests only (case id, task, prompt, target), so no editor can read the
        rephrase or neighbours an edit is scored on.
        If `_apply` raises, every undo it registered so far runs (in reverse) and the error
        propagates: the model is then bitwise what it was.
      - `key_record(model, tok, case)`: keys and key distances for the report, or None.
      - trainable editors (`trainable = True`) implement `fit`, `save`, `load`; the others raise
        NotSavableError from `save`/`load`.
      - `edit_state(model)` / `load_edit(model, tok, state)`: the edit as data and back, bitwise,
        never training; editors that wrap modules override `edit_state` and `_load_edit`.
    """

    name: ClassVar[str]
    HParams: ClassVar[type[EditorHParams]] = EditorHParams
    trainable: ClassVar[bool] = False  # True: needs fit(train_cases) before apply (MALMEN, A-GRACE)
    # True when `edit_state` holds everything a later apply depends on (no other state kept across
    # applies), so a sequential run may resume from a saved edit (lifelong.snapshot) instead of
    # re-applying every recorded edit. An editor that leaves it False is always re-applied.
    SNAPSHOT_RESUME: ClassVar[bool] = False
    # Cost hints for estimates and ETAs only: seconds of one apply by task, as wall time on 2 CPU cores
    # (smollm2-135m; the default study, two 1-thread workers: half a worker's seconds). `fit_seconds`
    # and `once_seconds` scale theirs with the hparams.
    APPLY_SECONDS: ClassVar[dict[str, float]] = {}

    def __init__(self, hparams: EditorHParams | None = None):
        self.hparams = hparams if hparams is not None else self.HParams()

    def fit_seconds(self, task: str) -> float:
        """Rough seconds of fitting one fold for `task` with these hparams (a trainable editor's cost hint)."""
        return 0.0

    def once_seconds(self) -> float:
        """Rough seconds of the one-off work per model a disk cache keeps afterwards (cost hint)."""
        return 0.0

    def prepare(self, model: nn.Module, tok: Any) -> None:
        """Load or compute what every edit of `model` needs (no-op here). Must be idempotent."""
        return None

    def apply(self, model: nn.Module, tok: Any, cases: list[EditCase | EditRequest]) -> EditResult:
        """Edit `model` so each case's prompt yields its target; measure the cost of `_apply` alone.

        `_apply` receives each item's `EditRequest` (see the class doc), never the whole case.
        """
        if not cases:
            raise InputError(f"{self.name}: apply needs at least one edit case")
        requests = [as_request(c) for c in cases]
        self.prepare(model, tok)
        device = next(model.parameters()).device
        result = EditResult()
        with undone_on_error(result), CostMeter(device) as meter:
            self._apply(model, tok, requests, result)
        result.seconds, result.peak_bytes = meter.seconds, meter.peak_bytes
        result.resident_peak_bytes = meter.resident_peak_bytes
        return result

    @abstractmethod
    def _apply(self, model: nn.Module, tok: Any, cases: list[EditRequest], result: EditResult) -> None:
        """Edit in place, knowing of each edit only its request (id, task, prompt, target). Append an
        undo to `result.undo` *before* each change it covers (so a failure later in `_apply` is undone
        too) and put editor-specific facts in `result.info`."""

    # --- the edit as data (fix files) ---------------------------------------------------------
    def edited_layers(self, model: nn.Module) -> list[int]:
        """The layers (of `model`) whose down projection an edit may change: every editor declares
        them, a weight editor the layers it edits, a wrapper the layer it wraps, and one that changes
        no weight `[]`. An editor that does not declare them cannot save or load an edit."""
        raise NotSavableError(
            f"editor {self.name!r} does not declare the weights it edits: implement edited_layers "
            "(return [] when it edits none), or implement edit_state and _load_edit for an edit of another kind"
        )

    def edited_parameters(self, model: nn.Module) -> list[str]:
        """Full names of the parameters an edit may change: those of the down projections of
        `edited_layers`. A saved edit may set these and nothing else."""
        arch = arch_of(model)
        paths = [arch.path("down_proj", layer) for layer in self.edited_layers(model)]
        return [f"{p}.{k}" for p in paths for k, _ in model.get_submodule(p).named_parameters()]

    def edit_state(self, model: nn.Module) -> EditState:
        """The edit this editor has made in `model` (every apply not restored) as data.

        Default (weight editors): the current values (not deltas) of `edited_parameters`.
        """
        params = dict(model.named_parameters())
        return EditState(
            {k: params[k].detach().to("cpu", copy=True).contiguous() for k in self.edited_parameters(model)}
        )

    def load_edit(self, model: nn.Module, tok: Any, state: EditState) -> EditResult:
        """Put a saved edit into the unedited `model` without training; `restore()` takes it out.

        A state that does not fit this editor and model (a name it does not edit, a shape)
        raises IntegrityError, and then the model is bitwise what it was.
        """
        result = EditResult()
        with undone_on_error(result):
            self._load_edit(model, tok, state, result)
        return result

    def _load_edit(self, model: nn.Module, tok: Any, state: EditState, result: EditResult) -> None:
        """Default (weight editors): write the saved parameter values in (backed up first)."""
        params = dict(model.named_parameters())
        allowed = set(self.edited_parameters(model))
        for name, value in state.tensors.items():
            if name not in allowed:
                raise IntegrityError(f"the saved edit would set {name!r}, which {self.name} does not edit")
            if params[name].shape != value.shape:
                raise IntegrityError(
                    f"the saved {name} is {tuple(value.shape)}, the model's is {tuple(params[name].shape)}"
                )
        result.undo.append(backup_weights({k: params[k] for k in state.tensors}))
        with torch.no_grad():
            for name, value in state.tensors.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    def key_record(self, model: nn.Module, tok: Any, case: EditCase) -> dict[str, Any] | None:
        """Keys and key distances of a case's prompt, rephrase and neighbours (None: no keys)."""
        return None

    # Trainable editors override these three.
    def fit(
        self,
        model: nn.Module,
        tok: Any,
        train_cases: list[EditCase],
        unprobed: Sequence[str] = (),
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Train on `train_cases`; `unprobed`: inputs that are no probe of the cases it will be scored
        on (data.unprobed), which an editor may use as unlabelled text; kwargs override hparams."""
        return {}

    def save(self, directory: str | Path) -> None:
        raise NotSavableError(f"{self.name} has no trained part to save")

    def load(self, directory: str | Path) -> None:
        raise NotSavableError(f"{self.name} has no trained part to load")


def get_editor(name: str, preset: str | None = None, **overrides: Any) -> Editor:
    """An editor by registry name, with hparams from defaults < preset (model name or YAML path) < overrides."""
    cls = editor_class(name)
    return cls(load_hparams(cls.HParams, cls.name, preset, **overrides))
