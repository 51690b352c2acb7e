"""The check every renaming passes (data.rename): the renamed code is the same program with other names.

Its re-parsed AST equals the original's modulo the bijective renaming, and the compiler's symbol
tables agree scope by scope (every name keeps its local / free / global / parameter role). The code
is only parsed, never compiled into bytecode or run.
"""

from __future__ import annotations

import ast
import symtable

_FLAGS = ("is_parameter", "is_global", "is_declared_global", "is_local", "is_free", "is_imported")
_FLAGS += ("is_assigned", "is_referenced", "is_nonlocal", "is_namespace")


def identifiers(tree: ast.AST) -> set[str]:
    """Every identifier spelled anywhere in `tree` (names, attributes, keywords, aliases, ...)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        for field in ("id", "arg", "attr", "name", "asname", "rest"):
            value = getattr(node, field, None)
            if isinstance(value, str):
                out.add(value)
        if isinstance(node, ast.Global | ast.Nonlocal):
            out.update(node.names)
        if isinstance(node, ast.alias):
            out.update(node.name.split("."))
    return out


def _same_modulo(a: object, b: object, mapping: dict[str, str], ident: bool = False) -> bool:
    if isinstance(a, ast.AST):
        if type(a) is not type(b):
            return False
        for field in a._fields:
            is_ident = field in ("id", "arg", "names") or (
                field == "name" and isinstance(a, ast.ExceptHandler)
            )
            if not _same_modulo(getattr(a, field, None), getattr(b, field, None), mapping, is_ident):
                return False
        return True
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_same_modulo(x, y, mapping, ident) for x, y in zip(a, b))
        )
    if ident and isinstance(a, str):
        return a == b or mapping.get(a) == b
    return type(a) is type(b) and a == b


def _same_scopes(old: symtable.SymbolTable, new: symtable.SymbolTable, inverse: dict[str, str]) -> bool:
    if old.get_type() != new.get_type():
        return False
    # A class body may hold one symbol for its own `a` and the function's `a` passing through to a
    # method; renaming the latter splits it in two. So class scopes are checked by name only; their
    # methods and comprehensions (child tables) are checked strictly.
    strict = old.get_type() != "class"
    if strict and len(old.get_symbols()) != len(new.get_symbols()):
        return False
    for sym in new.get_symbols():
        try:
            before = old.lookup(inverse.get(sym.get_name(), sym.get_name()))
        except KeyError:
            return False
        if strict and any(getattr(sym, f)() != getattr(before, f)() for f in _FLAGS):
            return False
    old_kids, new_kids = old.get_children(), new.get_children()
    return len(old_kids) == len(new_kids) and all(
        _same_scopes(o, n, inverse) for o, n in zip(old_kids, new_kids)
    )


def verify_renaming(old_code: str, new_code: str, mapping: dict[str, str]) -> bool:
    """True iff `new_code` is `old_code` with a consistent, collision-free renaming by `mapping`."""
    try:
        old_tree, new_tree = ast.parse(old_code), ast.parse(new_code)
        if set(mapping.values()) & identifiers(old_tree) or len(set(mapping.values())) != len(mapping):
            return False
        if not _same_modulo(old_tree, new_tree, mapping):
            return False
        inverse = {v: k for k, v in mapping.items()}
        return _same_scopes(
            symtable.symtable(old_code, "<old>", "exec"),
            symtable.symtable(new_code, "<new>", "exec"),
            inverse,
        )
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
