"""The no-edit baseline: changes nothing (the unedited row, and the conformance suite's identity)."""

from __future__ import annotations

from clmedit.data.schema import EditRequest
from clmedit.editors.base import Editor, EditResult


class NoEdit(Editor):
    name = "none"
    SNAPSHOT_RESUME = True  # its edit_state is its whole lifelong state

    def _apply(self, model, tok, cases: list[EditRequest], result: EditResult) -> None:
        pass

    def edited_layers(self, model) -> list[int]:
        return []
