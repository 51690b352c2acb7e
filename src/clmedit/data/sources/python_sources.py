"""Mine edit examples from directories of Python files — by default the running interpreter's
standard library (real code, real docstrings). Files are parsed with `ast` only: never imported,
never executed.

CSNE-style: a function with its docstring removed -> the first sentence of that docstring.
CNLE-style: the docstring summary (plus the parameters the code uses) -> a one-line `return`
expression. Functions with a good summary but no such expression become pool-only examples
(output None): specificity neighbours need only an input.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from clmedit.data.sources import RawExample, SourceError, first_sentence, summary_problem

FuncDef = ast.FunctionDef | ast.AsyncFunctionDef

SKIP_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".tox", ".venv", "venv", "node_modules", "site-packages"}
)
STDLIB_SKIP_DIRS = SKIP_DIRS | {"test", "tests", "idle_test"}
MAX_FUNCTION_CHARS = 8000  # far above 512 tokens; the build applies the precise token limit later


def stdlib_dir() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def iter_python_files(roots: Iterable[str | Path], skip_dirs: frozenset[str] = SKIP_DIRS) -> Iterator[Path]:
    """Every `.py` file under `roots`, in a deterministic order; symlinked folders are not followed."""
    for root in map(Path, roots):
        if root.is_file() and root.suffix == ".py":
            yield root
            continue
        if not root.is_dir():
            raise SourceError(f"{root}: no such directory (expected a folder of Python files)")
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("."))
            for name in sorted(files):
                if name.endswith(".py"):
                    yield Path(folder) / name


def parse_source(data: bytes, skipped: Counter) -> ast.Module | None:
    """Parse UTF-8 Python source; None (reason counted) for non-UTF-8 text or a syntax error."""
    try:
        text = data.decode("utf-8-sig")  # a BOM is legal in Python source
    except UnicodeDecodeError:
        skipped["non-utf8 file"] += 1
        return None
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):  # ValueError: null bytes in the source
        skipped["syntax error"] += 1
    except (RecursionError, MemoryError):
        skipped["too deeply nested to parse"] += 1
    return None


def iter_functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, FuncDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            qual = f"{prefix}{node.name}"
            yield qual, node
            yield from iter_functions(node, qual + ".<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from iter_functions(node, f"{prefix}{node.name}.")
        else:
            yield from iter_functions(node, prefix)


def _docstring_node(fn: FuncDef) -> ast.Expr | None:
    first = fn.body[0] if fn.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first
    return None


def strip_docstring(fn: FuncDef) -> tuple[str | None, str | None]:
    """(source of `fn` without its docstring, the docstring). Code is None when nothing but the
    docstring is left. The input node is not modified; comments are dropped by `ast.unparse`."""
    doc_node = _docstring_node(fn)
    if doc_node is None:
        return ast.unparse(fn), None
    if len(fn.body) == 1:
        return None, ast.get_docstring(fn)
    stripped = copy.copy(fn)  # shallow: only the body list is replaced
    stripped.body = fn.body[1:]
    return ast.unparse(stripped), ast.get_docstring(fn)


def _params(fn: FuncDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def _is_trivial(expr: ast.expr) -> bool:
    """A bare constant/name/attribute chain (or a tuple of them), or a plain `super()` delegation:
    nothing to learn."""
    if isinstance(expr, ast.Tuple | ast.List | ast.Set):  # (a, b): a tuple of trivial parts
        return all(_is_trivial(e) for e in expr.elts)
    node = expr
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Constant | ast.Name):
        return True
    if isinstance(expr, ast.Call):
        inner = expr.func.value if isinstance(expr.func, ast.Attribute) else expr.func
        if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "super":
            return True
    return False


def return_expression(fn: FuncDef, max_chars: int = 64) -> str | None:
    """The one-line expression of a body that is just `return EXPR` (after the docstring), or None."""
    body = fn.body[1:] if _docstring_node(fn) is not None else fn.body
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return None
    expr = body[0].value
    if _is_trivial(expr):
        return None
    text = ast.unparse(expr)
    return text if "\n" not in text and len(text) <= max_chars else None


def intent_for(summary: str, params: list[str]) -> str:
    """CoNaLa-style intent: the summary, naming the variables the code uses in backticks."""
    text = summary.rstrip(".").strip()
    if params:
        named = ", ".join(f"`{p}`" for p in params[:3])
        text = f"{text}, given {named}"
    return text


def mine_python(
    task: str,
    roots: Iterable[str | Path] | None = None,
    skipped: Counter | None = None,
    skip_dirs: frozenset[str] | None = None,
    max_target_chars: int = 64,
    progress: bool = True,
) -> list[RawExample]:
    """Mine CSNE (`task="csne"`) or CNLE (`task="cnle"`) examples from Python files under `roots`
    (default: the standard library, without its tests). Never imports or runs the code."""
    skipped = skipped if skipped is not None else Counter()
    if roots is None:
        roots, label = [stdlib_dir()], "stdlib"
        skip_dirs = STDLIB_SKIP_DIRS if skip_dirs is None else skip_dirs
    else:
        roots, label = [Path(r) for r in roots], "py"
    skip_dirs = SKIP_DIRS if skip_dirs is None else skip_dirs
    files = [(root, f) for root in roots for f in iter_python_files([root], skip_dirs)]
    out: list[RawExample] = []
    for root, path in tqdm(files, desc=f"mining {label}", unit="file", disable=not progress):
        try:
            tree = parse_source(path.read_bytes(), skipped)
        except OSError:
            skipped["unreadable file"] += 1
            continue
        if tree is None:
            continue
        rel = path.relative_to(root).as_posix() if path != root else path.name
        for qual, fn in iter_functions(tree):
            ex = _example(task, fn, f"{label}:{rel}:{qual}", skipped, max_target_chars)
            if ex is not None:
                ex.meta.update(source=label, path=rel, func_name=qual)
                out.append(ex)
    if not out:
        raise SourceError(
            f"no usable documented function under {', '.join(map(str, roots))} ({dict(skipped)})"
        )
    return out


def _example(task: str, fn: FuncDef, uid: str, skipped: Counter, max_target_chars: int) -> RawExample | None:
    doc_node = _docstring_node(fn)
    if doc_node is None:
        skipped["no docstring"] += 1
        return None
    summary = first_sentence(ast.get_docstring(fn) or "")
    problem = summary_problem(summary)
    if problem:
        skipped[problem] += 1
        return None
    if task == "csne":
        code, _ = strip_docstring(fn)
        if code is None:
            skipped["empty body"] += 1
            return None
        if len(code) > MAX_FUNCTION_CHARS:
            skipped["code too long"] += 1
            return None
        return RawExample(uid, code, summary)
    expr = return_expression(fn, max_target_chars)
    if expr is None:  # a pool-only intent: it can be a neighbour, not a target
        return RawExample(uid, intent_for(summary, _params(fn)), None)
    used = {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
    params = [p for p in _params(fn) if p in used]
    return RawExample(uid, intent_for(summary, params), expr, meta={"summary": summary})


def stdlib_fingerprint() -> str:
    """A short hash of the standard library's Python sources (relative names and sizes) and version."""
    root = stdlib_dir()
    h = hashlib.sha256(f"{sys.version_info[:3]}".encode())
    for p in iter_python_files([root], STDLIB_SKIP_DIRS):
        h.update(f"{p.relative_to(root).as_posix()}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:12]
