"""CodeSearchNet-Python reader (CSNE): JSONL files (optionally `.gz`), folders of them, or a
Hugging Face dataset with the same fields.

input = the function's code without its docstring, output = the first sentence of the docstring.
Code is parsed with `ast` (never executed) and re-printed with `ast.unparse`; code that Python 3
cannot parse (CodeSearchNet has Python 2) keeps its text with the docstring literal cut out, and
`meta["parsed"]` is False (such code cannot be renamed, so it serves only as a neighbour).
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clmedit.data.schema import iter_jsonl
from clmedit.data.sources import RawExample, SourceError, first_sentence, summary_problem
from clmedit.data.sources.conala import load_hf_records
from clmedit.data.sources.python_sources import MAX_FUNCTION_CHARS, strip_docstring

_DOC_LITERAL = re.compile(r"""^\s*[rRuUbB]{0,2}("{3}|'{3}|"|')(?:.|\n)*?(?<!\\)\1[ \t]*\n?""")
_SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "dev": "valid", "test": "test"}


def _first_field(obj: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = obj.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def code_and_docstring(code: str) -> tuple[str | None, str | None, bool]:
    """(code without docstring, docstring, parsed). Falls back to cutting the docstring literal
    textually when the code does not parse as Python 3."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    fn = (
        next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)), None)
        if tree
        else None
    )
    if fn is not None:
        stripped, doc = strip_docstring(fn)
        return stripped, doc, True
    header = re.search(r"^[ \t]*(?:async\s+)?def\b.*?:[ \t]*\n", code, flags=re.MULTILINE | re.DOTALL)
    if header is None:
        return code.strip(), None, False
    rest = code[header.end() :]
    match = _DOC_LITERAL.match(rest)
    if match is None:
        return code.strip(), None, False
    return (code[: header.end()] + rest[match.end() :]).rstrip(), match.group(0).strip(), False


def codesearchnet_example(
    obj: dict[str, Any], index: int, skipped: Counter, split: str | None = None, prefix: str = "csn"
) -> RawExample | None:
    """One CodeSearchNet record as a RawExample, or None (reason counted in `skipped`)."""
    code = _first_field(obj, "code", "original_string", "func_code_string", "whole_func_string")
    if code is None:
        skipped["missing code"] += 1
        return None
    stripped, literal_doc, parsed = code_and_docstring(code)
    doc = _first_field(obj, "docstring", "func_documentation_string") or literal_doc
    if doc is None:
        skipped["missing docstring"] += 1
        return None
    if stripped is None or not stripped.strip():
        skipped["empty body"] += 1
        return None
    if len(stripped) > MAX_FUNCTION_CHARS:
        skipped["code too long"] += 1
        return None
    summary = first_sentence(doc)
    problem = summary_problem(summary)
    if problem:
        skipped[problem] += 1
        return None
    record_split = _SPLITS.get(str(obj.get("partition") or obj.get("split_name") or "").lower(), split)
    func = obj.get("func_name") or obj.get("identifier")
    uid = f"{prefix}:{obj.get('repo', obj.get('repository_name', ''))}:{obj.get('path', '')}:{func}:{index}"
    meta = {
        "source": prefix,
        "func_name": func,
        "repo": obj.get("repo"),
        "url": obj.get("url"),
        "parsed": parsed,
    }
    if not parsed:
        skipped["not python 3 (kept, not renamable)"] += 1
    return RawExample(uid, stripped, summary, split=record_split, meta=meta)


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
            if not found:
                raise SourceError(f"{path}: folder has no .jsonl or .jsonl.gz file")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise SourceError(f"{path}: no such file or folder (expected CodeSearchNet JSONL)")
    return out


def _split_from_name(path: Path) -> str | None:
    stem = path.name.lower()
    return next((s for key, s in _SPLITS.items() if re.search(rf"(^|[_\-.]){key}([_\-.]|$)", stem)), None)


def read_codesearchnet(
    paths: str | Path | Iterable[str | Path], skipped: Counter | None = None
) -> list[RawExample]:
    """Read CodeSearchNet-Python JSONL files / folders. The split comes from each record's
    `partition`, else from the file name (`python_test_0.jsonl.gz` -> test)."""
    skipped = skipped if skipped is not None else Counter()
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[RawExample] = []
    for path in _files(paths):
        with path.open("rb") as fh:
            head = fh.read(256).lstrip()
        if head[:1] not in (b"{", b"") and path.suffix != ".gz":
            raise SourceError(f"{path}: not JSONL (CodeSearchNet files hold one JSON object per line)")
        split = _split_from_name(path)
        for obj in iter_jsonl(path, skipped):
            ex = codesearchnet_example(obj, len(out), skipped, split)
            if ex is not None:
                out.append(ex)
    if not out:
        raise SourceError(f"{paths[0]}: no usable CodeSearchNet record (skipped: {dict(skipped)})")
    return out


def read_hf_codesearchnet(name: str, skipped: Counter | None = None) -> list[RawExample]:
    """A Hugging Face dataset with CodeSearchNet fields (code/func_code_string, docstring, ...)."""
    skipped = skipped if skipped is not None else Counter()
    out = []
    for split, record in load_hf_records(name):
        ex = codesearchnet_example(record, len(out), skipped, _SPLITS.get(split, split), prefix=f"hf:{name}")
        if ex is not None:
            out.append(ex)
    if not out:
        raise SourceError(
            f"hf:{name}: no record with CodeSearchNet fields (code, docstring); skipped {dict(skipped)}"
        )
    return out
