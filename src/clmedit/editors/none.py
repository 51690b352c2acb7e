"""The no-edit baseline: changes nothing (the unedited row, and the conformance suite's identity)."""

from __future__ import annotations

from clmedit.editors.base import Editor, EditResult


class NoEdit(Editor):
    name = "none"

    def _apply(self, model, tok, cases, result: EditResult) -> None:
        pass

    def edited_parameters(self, model) -> list[str]:
        return []
