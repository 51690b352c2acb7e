"""Semantics-preserving identifier renaming, in the spirit of ALERT: the CSNE generalization input.

Only the parameters and locals of the outer function are renamed, scope-aware: a nested function,
lambda, comprehension or class that rebinds a name keeps its own binding; one that reads it freely
(or declares it `nonlocal`) sees the new name. Never renamed: builtins, attributes, keyword-argument
names at call sites, globals, imported / def / class / match-captured names, `self` and `cls`.
Default values, annotations and decorators of the outer function are evaluated outside it, so names
there are left alone. New names are fresh: drawn from identifiers mined in the corpus, never a name
already in the function, a builtin or a keyword.

Invariant (checked for every output): the re-parsed code's AST equals the original AST modulo the
bijective renaming, and the compiler's symbol tables agree scope by scope (every name keeps its
local / free / global / parameter role). The code is only parsed, never compiled into bytecode or run.
"""

from __future__ import annotations

import ast
import builtins
import copy
import keyword
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from clmedit.data.rename_check import identifiers, verify_renaming

RESERVED = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
KEEP = frozenset({"self", "cls"})
DYNAMIC = frozenset({"locals", "vars", "eval", "exec", "dir"})  # see the local namespace by name
_IDENT = re.compile(r"^[a-z][a-z0-9_]{1,24}$")
Scope = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


class _Binder(ast.NodeVisitor):
    """Names bound in one scope (not descending into nested scopes)."""

    def __init__(self) -> None:
        self.renamable: set[str] = set()  # bound by assignment, for, with, except, walrus, del
        self.fixed: set[str] = set()  # bound by import, def, class or a match capture
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()

    @property
    def bound(self) -> set[str]:
        return self.renamable | self.fixed

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.renamable.add(node.id)

    def visit_Global(self, node: ast.Global) -> None:
        self.globals.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.nonlocals.update(node.names)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.renamable.add(node.name)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.fixed.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")

    visit_ImportFrom = visit_Import

    def _capture(self, node: ast.AST) -> None:
        name = getattr(node, "name", None) or getattr(node, "rest", None)
        if name:
            self.fixed.add(name)
        self.generic_visit(node)

    visit_MatchAs = visit_MatchStar = visit_MatchMapping = _capture

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.fixed.add(node.name)  # its body is another scope; only the outside parts are ours
        for part in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if part is not None:
                self.visit(part)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.fixed.add(node.name)
        for part in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(part)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for part in [*node.args.defaults, *node.args.kw_defaults]:
            if part is not None:
                self.visit(part)

    def _comprehension(self, node: ast.AST) -> None:
        # comprehension targets bind in the comprehension's scope, but a walrus binds here
        for sub in ast.walk(node):
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                self.renamable.add(sub.target.id)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension


def _bindings(body: Iterable[ast.AST]) -> _Binder:
    binder = _Binder()
    for stmt in body:
        binder.visit(stmt)
    return binder


def _arg_nodes(args: ast.arguments) -> list[ast.arg]:
    nodes = args.posonlyargs + args.args + args.kwonlyargs
    return nodes + [a for a in (args.vararg, args.kwarg) if a is not None]


def _inner(mapping: dict[str, str], scope: Scope) -> dict[str, str]:
    """The mapping seen inside a nested function or lambda: minus what it rebinds locally."""
    body = [scope.body] if isinstance(scope, ast.Lambda) else scope.body
    binder = _bindings(body)
    local = {a.arg for a in _arg_nodes(scope.args)} | (binder.bound - binder.nonlocals) | binder.globals
    return {k: v for k, v in mapping.items() if k not in local}


def _rename(node: ast.AST, here: dict[str, str], inner: dict[str, str]) -> None:
    """Rename in place. `here`: names resolved in this block; `inner`: what nested scopes see
    (they differ only in a class body, whose names nested scopes skip)."""
    if isinstance(node, ast.Name):
        node.id = here.get(node.id, node.id)
    elif isinstance(node, ast.Nonlocal):
        node.names = [here.get(n, n) for n in node.names]
    elif isinstance(node, ast.ExceptHandler):
        node.name = here.get(node.name, node.name) if node.name else node.name
        _children(node, here, inner)
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        args = node.args
        outside = [*args.defaults, *args.kw_defaults, *getattr(node, "decorator_list", [])]
        outside += [a.annotation for a in _arg_nodes(args)] + [getattr(node, "returns", None)]
        for part in outside:
            if part is not None:
                _rename(part, here, inner)
        body_map = _inner(inner, node)
        for stmt in [node.body] if isinstance(node, ast.Lambda) else node.body:
            _rename(stmt, body_map, body_map)
    elif isinstance(node, ast.ClassDef):
        for part in [*node.decorator_list, *node.bases, *node.keywords]:
            _rename(part, here, inner)
        binder = _bindings(node.body)
        class_here = {k: v for k, v in inner.items() if k not in binder.bound | binder.globals}
        for stmt in node.body:
            _rename(stmt, class_here, inner)
    elif isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        first, *rest = node.generators
        _rename(first.iter, here, inner)  # evaluated in the enclosing scope
        targets = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        comp = {k: v for k, v in inner.items() if k not in targets}
        for part in [first.target, *first.ifs, *rest]:
            _rename(part, comp, comp)
        for part in (getattr(node, f, None) for f in ("elt", "key", "value")):
            if part is not None:
                _rename(part, comp, comp)
    else:
        _children(node, here, inner)


def _children(node: ast.AST, here: dict[str, str], inner: dict[str, str]) -> None:
    for child in ast.iter_child_nodes(node):
        _rename(child, here, inner)


def renamable_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Parameters and locals of `fn` that can be renamed safely, sorted."""
    binder = _bindings(fn.body)
    names = {a.arg for a in _arg_nodes(fn.args)} | binder.renamable
    names -= binder.fixed | binder.globals | binder.nonlocals | KEEP
    return sorted(n for n in names if not (n.startswith("__") and n.endswith("__")))


# Added after the corpus's own names, so a tiny corpus still has enough fresh names to draw from.
_COMMON = (
    "data item value result key index count size name text line path node obj items values keys "
    "buf chunk entry record token parts pos offset start end total other target source dest args "
    "options config state flag mode kind label prefix suffix pattern message content number amount "
    "element elem arg param res out tmp val cur prev nxt first last left right head tail"
)
COMMON_NAMES = tuple(_COMMON.split())


def mine_identifier_pool(codes: Iterable[str], max_size: int = 1000) -> list[str]:
    """Parameter and local names used in a corpus, most frequent first (then `COMMON_NAMES`):
    the source of new names."""
    counts: Counter[str] = Counter()
    for code in codes:
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            name = node.arg if isinstance(node, ast.arg) else node.id if isinstance(node, ast.Name) else None
            if name and _IDENT.match(name) and name not in RESERVED and name not in KEEP:
                counts[name] += 1
    mined = [n for n, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_size]]
    return mined + [n for n in COMMON_NAMES if n not in counts]


def rename_identifiers(
    code: str, pool: Sequence[str], rng: random.Random
) -> tuple[str, dict[str, str]] | None:
    """(renamed code, old -> new mapping) for a single function definition, or None when nothing can
    be renamed safely (no parameter or local, dynamic-scope calls, not one function, unparsable)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    if any(isinstance(n, ast.Name) and n.id in DYNAMIC for n in ast.walk(tree.body[0])):
        return None  # locals()/eval() would see the names as strings
    old_names = renamable_names(tree.body[0])
    taken = identifiers(tree) | RESERVED
    choices = [p for p in pool if p not in taken]
    if not old_names or len(choices) < len(old_names):
        return None
    mapping = dict(zip(old_names, rng.sample(choices, len(old_names))))
    new_tree = copy.deepcopy(tree)
    fn = new_tree.body[0]
    for arg in _arg_nodes(fn.args):
        arg.arg = mapping.get(arg.arg, arg.arg)
    for stmt in fn.body:
        _rename(stmt, mapping, mapping)
    new_code = ast.unparse(new_tree)
    if not verify_renaming(code, new_code, mapping):
        return None
    return new_code, mapping
