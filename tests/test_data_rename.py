"""Identifier renaming on tricky code: scope-aware, collision-free, verified modulo the renaming."""

from __future__ import annotations

import ast
import random

import pytest

from clmedit.data.rename import mine_identifier_pool, renamable_names, rename_identifiers, verify_renaming

POOL = [f"name{i}" for i in range(40)] + ["len", "print", "total", "result"]

TRICKY = """@decorate(x)
def f(a, b=x, /, *args, c: int = a, key=None, **kw) -> list:
    global counter
    counter += 1
    total = 0
    def inner(a):
        nonlocal total
        total += a + b
        return [total for total in range(a)]
    g = lambda b, d=a: b + d + c
    items = [a * i for i in args if i > b]
    squares = {k: v for k, v in kw.items()}
    msg = f"{a!r:>{b}} {total}"
    class K:
        a = 1
        def m(self, q=a):
            return a + q
        z = [a for _ in range(2)]
    try:
        pass
    except ValueError as err:
        raise RuntimeError(err)
    if (n := len(args)) > 2:
        total += n
    sorted(items, key=key)
    obj.a = dict(a=a, b=b)
    return inner(a) + items + [g(1)] + [x] + [len(msg)]
"""


def _rename(code, seed=0, pool=POOL):
    out = rename_identifiers(code, pool, random.Random(seed))
    assert out is not None
    return out


def _names(code, kind):
    tree = ast.parse(code)
    if kind == "attr":
        return sorted(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute))
    return sorted(k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords if k.arg)


def test_tricky_function_renamed_scope_aware():
    new, mapping = _rename(TRICKY)
    assert set(mapping) == {
        "a",
        "args",
        "b",
        "c",
        "err",
        "g",
        "items",
        "key",
        "kw",
        "msg",
        "n",
        "squares",
        "total",
    }
    assert not set(mapping.values()) & {
        "len",
        "print",
        "total",
        "result",
        "x",
        "counter",
    }  # builtins and taken names
    assert verify_renaming(TRICKY, new, mapping)
    m = mapping
    tree = ast.parse(new)
    fn = tree.body[0]
    assert [a.arg for a in fn.args.posonlyargs + fn.args.args] == [m["a"], m["b"]]
    assert (
        fn.args.kwonlyargs[0].arg == m["c"]
        and fn.args.vararg.arg == m["args"]
        and fn.args.kwarg.arg == m["kw"]
    )
    # defaults and decorators are evaluated outside the function: global `x`, global `a` untouched
    assert ast.unparse(fn.decorator_list[0]) == "decorate(x)" and ast.unparse(fn.args.kw_defaults[0]) == "a"
    assert "global counter" in new and "counter += 1" in new
    # nested function rebinds `a` (its own parameter) but reads `b` and nonlocal `total` from f
    assert f"def inner(a):\n        nonlocal {m['total']}\n        {m['total']} += a + {m['b']}" in new
    assert "[total for total in range(a)]" in new  # the comprehension's own `total`
    assert f"lambda b, d={m['a']}: b + d + {m['c']}" in new
    assert f"[{m['a']} * i for i in {m['args']} if i > {m['b']}]" in new
    assert f"f'{{{m['a']}!r:>{{{m['b']}}}}} {{{m['total']}}}'" in new  # f-string fields renamed
    assert "a = 1" in new and "def m(self, q=a):" in new  # class attribute and class-scope default
    assert (
        f"return {m['a']} + q" in new and f"z = [{m['a']} for _ in range(2)]" in new
    )  # skip the class scope
    assert f"except ValueError as {m['err']}:" in new and f"({m['n']} := len({m['args']}))" in new
    # attributes and keyword-argument names at call sites never change
    assert _names(new, "attr") == _names(TRICKY, "attr") and _names(new, "kw") == _names(TRICKY, "kw")
    assert f"dict(a={m['a']}, b={m['b']})" in new and f"key={m['key']}" in new


def test_deterministic_and_seed_dependent():
    assert _rename(TRICKY, 1) == _rename(TRICKY, 1)
    assert _rename(TRICKY, 1)[1] != _rename(TRICKY, 2)[1]


def test_self_imports_defs_and_dunders_are_kept():
    code = "def m(self, value):\n    import os\n    def helper():\n        return value\n    __x__ = 1\n    return os.sep + helper() + self.value\n"
    assert renamable_names(ast.parse(code).body[0]) == ["value"]
    new, mapping = _rename(code)
    assert "self.value" in new and "import os" in new and "def helper():" in new and "__x__ = 1" in new


def test_unsafe_or_impossible_cases_return_none():
    rng = random.Random(0)
    assert rename_identifiers("def f(a):\n    return locals()[a]\n", POOL, rng) is None  # dynamic scope
    assert rename_identifiers("def f():\n    return g()\n", POOL, rng) is None  # nothing to rename
    assert rename_identifiers("def f(x):\n    print x\n", POOL, rng) is None  # not Python 3
    assert rename_identifiers("x = 1\n", POOL, rng) is None  # not a function
    assert (
        rename_identifiers("def f(a, b):\n    return a\n", ["a"], rng) is None
    )  # pool exhausted by collisions


def test_verify_rejects_wrong_renamings():
    old = "def f(a):\n    b = a\n    return b.a\n"
    assert verify_renaming(old, "def f(z):\n    b = z\n    return b.a\n", {"a": "z"})
    assert not verify_renaming(old, "def f(z):\n    b = z\n    return b.z\n", {"a": "z"})  # attribute changed
    assert not verify_renaming(old, "def f(b):\n    b = b\n    return b.a\n", {"a": "b"})  # collision
    shadow = "def f(a):\n    def g():\n        return a\n    return g\n"
    assert not verify_renaming(
        shadow, "def f(z):\n    def g():\n        return a\n    return g\n", {"a": "z"}
    )


@pytest.mark.parametrize(
    "code",
    [
        "async def fetch(url, *, timeout=3):\n    async with session(url) as resp:\n        data = await resp.read()\n    return data\n",
        "def gen(n):\n    for i in range(n):\n        yield i * i\n",
        "def m(x):\n    match x:\n        case [first, *rest]:\n            return first\n        case {'k': v, **others}:\n            return v\n    return x\n",
        "def w(path):\n    with open(path) as fh, open(path) as gh:\n        lines, more = fh.read(), gh.read()\n    del more\n    return lines\n",
    ],
)
def test_more_constructs_verify(code):
    new, mapping = _rename(code)
    assert new != ast.unparse(ast.parse(code)) and verify_renaming(code, new, mapping)
    if "match" in code:
        assert "first" not in mapping and "rest" not in mapping  # match captures are kept


def test_identifier_pool_from_corpus():
    pool = mine_identifier_pool(
        ["def f(path, n):\n    count = n\n    return count", "def g(path):\n    return path", "bad("]
    )
    assert pool[:2] == ["path", "count"] and "f" not in pool and "len" not in pool and "data" in pool
