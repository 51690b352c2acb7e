"""Source readers: docstring cleaning, CoNaLa, CodeSearchNet, mined Python files; bad input counted."""

from __future__ import annotations

import ast
import gzip
import json
from collections import Counter

import pytest

from clmedit.data.sources import SourceError, first_sentence, summary_problem
from clmedit.data.sources.codesearchnet import code_and_docstring, read_codesearchnet
from clmedit.data.sources.conala import read_conala
from clmedit.data.sources.python_sources import mine_python, return_expression, strip_docstring


def test_first_sentence_cleans_markup_and_stops_early():
    doc = """Return the :func:`os.path.join` of ``a`` and b. More detail here.

    :param a: first
    """
    assert first_sentence(doc) == "Return the os.path.join of a and b."
    assert first_sentence("Split a path e.g. into parts\nover two lines.\n\nArgs:\n  x") == (
        "Split a path e.g. into parts over two lines."
    )
    assert first_sentence("Args:\n  x: y") == ""


@pytest.mark.parametrize(
    "summary, problem",
    [
        ("", "empty"),
        ("Helper.", "too short"),
        ("TODO: write this docstring", "non-descriptive"),
        ("Return the sum of two numbers.", None),
    ],
)
def test_summary_problem(summary, problem):
    found = summary_problem(summary)
    assert (found is None) if problem is None else (problem in found)


def test_strip_docstring_keeps_code_and_leaves_node_alone():
    fn = ast.parse('@dec\ndef f(a):\n    """Doc string here."""\n    # comment\n    return a + 1\n').body[0]
    code, doc = strip_docstring(fn)
    assert doc == "Doc string here."
    assert code == "@dec\ndef f(a):\n    return a + 1"
    assert ast.get_docstring(fn) == "Doc string here."  # input untouched
    only_doc = ast.parse('def g():\n    """Only a docstring."""\n').body[0]
    assert strip_docstring(only_doc)[0] is None


def test_return_expression_rejects_trivial_and_long():
    def body(src):
        return return_expression(ast.parse(src).body[0])

    assert body('def f(a):\n    """D."""\n    return sorted(a)[::-1]') == "sorted(a)[::-1]"
    for trivial in ("None", "self", "True", "self._name", "super().f(x)", "(a, self.b)"):
        assert body(f"def f(self):\n    return {trivial}") is None
    assert body("def f(a):\n    return " + " + ".join(["a"] * 40)) is None
    assert body("def f(a):\n    x = 1\n    return x + a") is None


def test_read_conala_list_and_jsonl_with_bad_records(tmp_path):
    records = [
        {
            "intent": "How to add?",
            "rewritten_intent": "add `a` and `b`",
            "snippet": "a + b",
            "question_id": 1,
        },
        {"intent": "reverse list x", "rewritten_intent": None, "snippet": "x[::-1]", "question_id": 2},
        {"intent": "no snippet", "rewritten_intent": "no snippet here"},
        {"snippet": "x"},
        "not an object",
    ]
    listed = tmp_path / "conala-test.json"
    listed.write_text(json.dumps(records))
    skipped = Counter()
    out = read_conala(listed, skipped)
    assert [e.input for e in out] == ["add `a` and `b`", "reverse list x"]
    assert out[0].human_rephrase == "How to add?" and out[1].human_rephrase is None
    assert out[0].split == "test"
    assert skipped == Counter({"missing snippet": 1, "missing intent": 1, "record is not an object": 1})
    lines = tmp_path / "mined.jsonl"
    lines.write_bytes(
        b"\n".join([json.dumps(r).encode() for r in records[:2]] + [b"{broken", b"\xff\xfe", b"[1]"])
    )
    skipped = Counter()
    assert len(read_conala(lines, skipped)) == 2
    assert skipped == Counter({"malformed json line": 1, "non-utf8 line": 1, "json line is not an object": 1})


def test_read_conala_bad_paths(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        read_conala(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("hello")
    with pytest.raises(SourceError, match="unknown CoNaLa format"):
        read_conala(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('[{"a": 1}]')
    with pytest.raises(SourceError, match="no usable"):
        read_conala(tmp_path / "y.json")


def _csn(code, doc, partition=None):
    rec = {"repo": "r", "path": "p.py", "func_name": "f", "code": code, "docstring": doc}
    if partition:
        rec["partition"] = partition
    return rec


def test_read_codesearchnet_gz_splits_and_python2(tmp_path):
    py3 = 'def add(a, b):\n    """Add two numbers together."""\n    return a + b\n'
    py2 = 'def show(x):\n    """Print a value to stdout."""\n    print x\n'
    recs = [
        _csn(py3, "Add two numbers together.", "test"),
        _csn(py2, "Print a value to stdout."),
        {"docstring": "x y z"},
    ]
    path = tmp_path / "python_train_0.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in recs) + "\n{bad json\n")
    skipped = Counter()
    out = read_codesearchnet(tmp_path, skipped)
    assert [e.split for e in out] == ["test", "train"]  # the record's partition wins over the file name
    assert out[0].input == "def add(a, b):\n    return a + b" and out[0].output == "Add two numbers together."
    assert out[1].meta["parsed"] is False and '"""' not in out[1].input and "print x" in out[1].input
    assert skipped["missing code"] == 1 and skipped["malformed json line"] == 1


def test_code_and_docstring_text_fallback():
    code, doc, parsed = code_and_docstring("def f(x):\n    '''Say hi.'''\n    print 'hi'\n")
    assert not parsed and doc == "'''Say hi.'''" and code == "def f(x):\n    print 'hi'"


def test_mine_python_counts_bad_files(tmp_path):
    (tmp_path / "good.py").write_text(
        "def area(w, h):\n    '''Compute the area of a rectangle.'''\n    return w * h\n\n"
        "class A:\n    def m(self, x):\n        '''Scale the value by two.'''\n        y = x * 2\n        return y\n"
        "def undocumented(x):\n    return x\n"
    )
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\ns = '\xe9'\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "skip.py").write_text(
        "def g():\n    '''Never seen here at all.'''\n    return 1\n"
    )
    skipped = Counter()
    csne = mine_python("csne", [tmp_path], skipped, progress=False)
    assert {e.meta["func_name"] for e in csne} == {"area", "A.m"}
    assert skipped["syntax error"] == 1 and skipped["non-utf8 file"] == 1 and skipped["no docstring"] == 1
    cnle = {e.meta["func_name"]: e for e in mine_python("cnle", [tmp_path], progress=False)}
    assert (
        cnle["area"].input == "Compute the area of a rectangle, given `w`, `h`"
        and cnle["area"].output == "w * h"
    )
    assert cnle["A.m"].output is None  # pool-only: no one-line return
    with pytest.raises(SourceError):
        mine_python("csne", [tmp_path / "nope"], progress=False)


def test_byte_order_marks_are_accepted(tmp_path):
    (tmp_path / "bom.py").write_bytes(
        b"\xef\xbb\xbfdef twice(x):\n    '''Double the given number.'''\n    return x * 2\n"
    )
    assert mine_python("cnle", [tmp_path], progress=False)[0].output == "x * 2"
    (tmp_path / "c.json").write_bytes(b'\xef\xbb\xbf[{"intent": "double x", "snippet": "x * 2"}]')
    assert read_conala(tmp_path / "c.json")[0].output == "x * 2"
