"""The live fixes of a served model: the model, its editor, the applied edits and the fix file.

Invariant: the model is the base model with `layers` applied in order, each layer one
`Editor.apply` (or, first, the fix file's `load_edited`) whose EditResult is still held, and the
fix file on disk (when there is one) holds exactly the edit of every listed fix: each change
replaces its folder whole (`files.atomic_write_dir`), so a crash leaves the old one or the new one.

Adding fixes is one more apply: the new layer. Taking fix F back restores the layers from F's
on, last first (bitwise: the editor contract), then applies again the fixes of those layers that
remain, in their order. The model is then what it would be had F never been added; taking back
the newest fix restores its layer alone, without any training. When a change fails part way, the
model is put back as it was (a new apply is undone by its own contract; a failed take-back
reloads the edit saved before it) and the error propagates. Every change holds the lock's write
side, so it waits for running generations and holds new ones back only while it runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase, read_cases
from clmedit.editors.base import Editor, EditResult, EditState
from clmedit.errors import InputError, IntegrityError
from clmedit.files import atomic_write_dir, finish_dir_write
from clmedit.fixes.artifact import BaseModelRecord, load_edited, write_fix_file
from clmedit.fixes.manifest import MANIFEST
from clmedit.serve.rwlock import RWLock

log = logging.getLogger(__name__)
FIXES_FILE = "fixes.jsonl"


@dataclass
class Layer:
    """One apply (or the loaded fix file) and the fixes it holds, in order."""

    cases: list[EditCase]
    result: EditResult


def fix_record(case: EditCase) -> dict[str, Any]:
    """A fix as `GET /v1/fixes` lists it."""
    return {"id": case.case_id, "object": "fix", "task": case.task, "prompt": case.prompt,
            "target": case.target, "added": case.meta.get("added")}  # fmt: skip


class FixStore:
    """A model, the editor that edits it, its live fixes and (optionally) the fix file that follows them."""

    def __init__(self, model, tok, editor: Editor, base: BaseModelRecord, directory: Path | None = None):
        self.model, self.tok, self.editor, self.base = model, tok, editor, base
        self.directory = directory
        self.layers: list[Layer] = []
        self.lock = RWLock()
        self._checked = False  # a save has checked that the editor's state holds its whole edit

    @classmethod
    def open(cls, model, tok, model_id: str, editor: Editor | None, directory: Path | None) -> FixStore:
        """The store of the unedited `model`: the fix file in `directory` loaded (its editor then
        edits), else no fixes and `editor`. A missing or empty `directory` is created at the first fix."""
        base = BaseModelRecord.of(model, tok, model_id)
        if directory is not None:
            finish_dir_write(directory)  # a save cut short by a crash
        if directory is None or not (directory / MANIFEST).is_file():
            if directory is not None and directory.is_dir() and any(directory.iterdir()):
                raise InputError(f"{directory} is not a clmedit fix file (no {MANIFEST}) and not empty")
            if editor is None:
                raise InputError("give an editor to make fixes with")
            return cls(model, tok, editor, base, directory)
        cases = _read_listed(directory)
        result = load_edited(model, directory, tok)
        store = cls(model, tok, result.info["editor"], base, directory)
        if editor is not None and editor.name != store.editor.name:
            result.restore()
            raise InputError(
                f"{directory} holds a {store.editor.name} edit; serve it without --editor {editor.name}"
            )
        store.layers.append(Layer(cases, result))
        log.info("serving %d fix(es) from %s", len(cases), directory)
        return store

    @property
    def cases(self) -> list[EditCase]:
        return [c for layer in self.layers for c in layer.cases]

    def records(self) -> list[dict[str, Any]]:
        return [fix_record(c) for c in self.cases]

    def add(self, cases: list[EditCase]) -> list[dict[str, Any]]:
        """Apply `cases` as new fixes (each gets a fresh id); live and saved when this returns."""
        if not cases:
            raise InputError("give at least one fix")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        cases = [c.model_copy(update={"case_id": _new_id(), "meta": {**c.meta, "added": now}}) for c in cases]
        with self.lock.write():
            result = self.editor.apply(self.model, self.tok, cases)
            self.layers.append(Layer(cases, result))
            try:
                self._save()
            except BaseException:
                self.layers.pop().result.restore()
                raise
        return [fix_record(c) for c in cases]

    def delete(self, fix_id: str) -> dict[str, Any]:
        """Take fix `fix_id` back, keeping every other fix; KeyError when there is no such fix."""
        with self.lock.write():
            i = next((n for n, layer in enumerate(self.layers) if fix_id in _ids(layer.cases)), None)
            if i is None:
                raise KeyError(fix_id)
            every = self.cases
            saved = self.editor.edit_state(self.model)  # to put back, should the take-back fail
            groups = [[c for c in layer.cases if c.case_id != fix_id] for layer in self.layers[i:]]
            try:
                while len(self.layers) > i:  # last first, as the editors' restores require
                    self.layers.pop().result.restore()
                for cases in filter(None, groups):  # one apply per former layer, as they were made
                    self.layers.append(Layer(cases, self.editor.apply(self.model, self.tok, cases)))
                self._save()
            except BaseException:
                self._reload(saved, every)
                raise
        return fix_record(next(c for c in every if c.case_id == fix_id))

    def _reload(self, saved: EditState, cases: list[EditCase]) -> None:
        """Restore every layer, then load the edit `saved` (of `cases`) as one layer, without training."""
        while self.layers:
            self.layers.pop().result.restore()
        self.layers.append(Layer(cases, self.editor.load_edit(self.model, self.tok, saved)))

    def _save(self) -> None:
        """Make the fix file hold the live edit, replacing its folder whole (no folder: nothing to do).

        With no fix left the folder is empty: a server started on it starts with no fixes.
        """
        if self.directory is None:
            return

        def write(tmp: Path) -> None:
            if self.layers:  # once a save has checked that the state holds the edit, later ones need not
                write_fix_file(self.model, self.editor, self.cases, tmp, self.base, check=not self._checked)

        atomic_write_dir(self.directory, write)
        self._checked = True


def _ids(cases: list[EditCase]) -> set[str]:
    return {c.case_id for c in cases}


def _new_id() -> str:
    return f"fix-{secrets.token_hex(6)}"


def _read_listed(directory: Path) -> list[EditCase]:
    """The fixes of a fix file, checked against its manifest (the server lists and replays them)."""
    path = directory / FIXES_FILE
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != manifest.get("fixes_sha256"):
        raise IntegrityError(f"{path} is missing or not the one its manifest declares; it cannot be served")
    cases = read_cases(path)
    if len(cases) != manifest.get("fixes") or len({c.case_id for c in cases}) != len(cases):
        raise IntegrityError(f"{path}: its fixes are not {manifest.get('fixes')} with distinct ids")
    return cases
