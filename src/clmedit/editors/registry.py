"""The editor registry: name -> "module:Class", aliases, and a display label per editor.

Torch-free on purpose: `clmedit editors` and the report list and label editors without
importing any editor (classes are imported only by `editor_class`). `editors.base` re-exports
everything here. The order of EDITORS is the study's table order (report rows follow it).
"""

from __future__ import annotations

import importlib
from typing import Any

from clmedit.errors import InputError

# name -> "module:Class"; editors are imported only when asked for. Insertion order = table order.
EDITORS: dict[str, str] = {
    "none": "clmedit.editors.none:NoEdit",
    "ft": "clmedit.editors.ft:FineTune",
    "rome": "clmedit.editors.rome:Rome",
    "memit": "clmedit.editors.memit:Memit",
    "pmet": "clmedit.editors.pmet:Pmet",
    "alphaedit": "clmedit.editors.alphaedit:AlphaEdit",
    "ultraedit": "clmedit.editors.ultraedit:UltraEdit",
    "malmen": "clmedit.editors.malmen.editor:Malmen",
    "grace": "clmedit.editors.grace.editor:Grace",
    "agrace-no-cl": "clmedit.editors.agrace.editor:AGraceNoCL",
    "agrace-last": "clmedit.editors.agrace.editor:AGraceLast",
    "agrace": "clmedit.editors.agrace.editor:AGrace",
    "wise": "clmedit.editors.wise.editor:Wise",
    "scope": "clmedit.editors.scope.editor:ScopeEditor",
}
ALIASES: dict[str, str] = {"ft-l": "ft", "ftl": "ft", "a-grace": "agrace"}
# name -> how tables and figures show it (the study's names)
LABELS: dict[str, str] = {
    "none": "Unedited", "ft": "FT-L", "rome": "ROME", "memit": "MEMIT", "pmet": "PMET", "alphaedit": "AlphaEdit",
    "ultraedit": "UltraEdit", "malmen": "MALMEN",
    "grace": "GRACE", "agrace": "A-GRACE", "agrace-no-cl": "A-GRACE w/o CL", "agrace-last": "A-GRACE w/o mean",
    "wise": "WISE", "scope": "SCOPE (ours)",
}  # fmt: skip


def register_editor(name: str, target: str, aliases: tuple[str, ...] = (), label: str | None = None) -> None:
    """Add an editor, e.g. register_editor('myedit', 'mypkg.edit:MyEditor', label='MyEdit').

    A name or alias already taken (by a name or an alias) is an InputError: nothing is replaced.
    """
    taken = [n for n in (name, *aliases) if n.lower() in EDITORS or n.lower() in ALIASES]
    if taken:
        raise InputError(f"editor name {taken[0]!r} is registered already; register under another name")
    EDITORS[name] = target
    LABELS[name] = label or name
    for alias in aliases:
        ALIASES[alias] = name


def editor_names() -> list[str]:
    return sorted(EDITORS)


def canonical_name(name: str) -> str:
    """The registry name for a name or alias (case-insensitive); KeyError lists the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in EDITORS:
        raise InputError(f"unknown editor {name!r}; available: {', '.join(editor_names())}")
    return key


def editor_label(name: str) -> str:
    """Display label of an editor (its name when unregistered)."""
    key = ALIASES.get(name.lower(), name.lower())
    return LABELS.get(key, name)


def table_order(name: str) -> tuple[int, str]:
    """Sort key putting registered editors in the study's order, others after them by name."""
    order = list(EDITORS)
    return (order.index(name) if name in order else len(order), name)


def editor_class(name: str) -> Any:
    """The editor class registered under `name` (imports its module now)."""
    module, _, cls = EDITORS[canonical_name(name)].partition(":")
    return getattr(importlib.import_module(module), cls)
