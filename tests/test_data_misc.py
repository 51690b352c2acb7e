"""CLMEEval import, judge parsing, rewording and paraphrase checks, the OpenAI-compatible backend,
and the `clmedit data` commands."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clmedit.cli import app
from clmedit.data.clmeeval import read_clmeeval
from clmedit.data.judge import judge_examples, parse_level
from clmedit.data.llm import LLMError, OpenAIChat, make_backend
from clmedit.data.rewrite import clean_reply, literals, llm_paraphrases, paraphrase_problem, reword
from clmedit.data.sources import RawExample, SourceError

MODEL = "CodeLlama-7b-hf"


def _release(tmp_path: Path) -> Path:
    cnle = {
        "case_id": 7,
        "edit_request": {
            "intent": "reverse list `x`",
            "snippet": "x[::-1]",
            "rewritten_intent": "flip the list `x`",
        },
        "neighborhoods": {
            "items": [{"intent": f"intent {i}"} for i in range(5)],
            "answers": {MODEL: [f"a{i}" for i in range(5)], "bad": ["x"]},
        },
    }
    csne = {
        "case_id": "c1",
        "edit_request": {
            "code": "def f(a):\n    return a",
            "code_doc": "Identity.",
            "code_rewrite": "def f(b):\n    return b",
        },
        "neighborhoods": {"items": [{"code": f"def g{i}(): pass"} for i in range(5)], "answers": {}},
    }
    broken = [
        {"edit_request": {"intent": "no snippet"}},
        {"foo": 1},
        {"edit_request": {"intent": "a", "snippet": "b", "rewritten_intent": "c"}},
    ]
    path = tmp_path / "clmeeval.json"
    path.write_text(json.dumps([cnle, csne, *broken]))
    return path


def test_read_clmeeval_both_tasks(tmp_path):
    skipped = Counter()
    cases = read_clmeeval(_release(tmp_path), skipped)
    cnle, csne = cases
    assert cnle.case_id == "7" and cnle.task == "cnle" and cnle.prompt == "Intent: reverse list `x`\nCode:"
    assert cnle.rephrase == "Intent: flip the list `x`\nCode:" and cnle.target == "x[::-1]"
    assert [n.answers for n in cnle.neighbours] == [{MODEL: f"a{i}"} for i in range(5)]
    assert csne.task == "csne" and csne.prompt.startswith("Code: def f(a)") and csne.target == "Identity."
    assert csne.rephrase.endswith("return b\nDescription:") and not csne.has_answers(MODEL)
    assert skipped == Counter({"missing cnle field": 1, "item without edit_request": 1, "missing neighbourhood items": 1,
                               "neighbour answers not one string per item": 1})  # fmt: skip
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SourceError, match="not a JSON"):
        read_clmeeval(tmp_path / "x.json")


@pytest.mark.parametrize(
    "reply, level",
    [("Very Relevant", 5), ("very irrelevant.", 1), ("Irrelevant", 2), ("**Relevant**", 4), ("Neutral", 3),
     ("The answer is: 4", 4), ("not relevant at all", 2), ("I'd say very_relevant", 5), ("hmm", None), ("", None)],
)  # fmt: skip
def test_parse_level(reply, level):
    assert parse_level(reply) == level


class _Canned:
    """A stand-in for a remote LLM: replies from a fixed list (the backend is not ours)."""

    name = "canned"

    def __init__(self, replies):
        self.replies = list(replies)

    def chat(self, messages, max_tokens=96):
        return self.replies.pop(0)


def test_judge_keeps_very_relevant_and_counts_levels():
    exs = [RawExample(f"u{i}", f"intent {i}", "code") for i in range(4)] + [
        RawExample("p", "pool only", None)
    ]
    kept, counts = judge_examples(exs, _Canned(["Very Relevant", "Relevant", "garbage", "5"]), progress=False)
    assert [e.uid for e in kept] == ["u0", "u3", "p"]
    assert counts == Counter({"Very Relevant": 2, "Relevant": 1, "Unparsed": 1})


def test_reword_keeps_literals_and_always_differs():
    for text in [
        "Return the sum of `a` and 'b' plus 3",
        "zip two lists `[1, 2]` and `[3, 4]`",
        "Hello world",
        "getValue of my_var",
    ]:
        new = reword(text)
        assert new != text and all(lit in new for lit in literals(text))
    assert reword("Return the sum of `a`") == "Produce the sum of `a`"


def test_paraphrase_checks():
    assert paraphrase_problem("sort list `x`", "order list `x`", 0.9, 0.75) is None
    assert "identical" in paraphrase_problem("sort list `x`", "Sort list `x`.", 0.99, 0.75)
    assert "identifier" in paraphrase_problem("sort list `x`", "order the list", 0.9, 0.75)
    assert "similarity" in paraphrase_problem("sort list `x`", "order list `x`", 0.5, 0.75)
    assert clean_reply('Paraphrase: "order list `x`"\nmore') == "order list `x`"
    got = llm_paraphrases(["sort list `x`", "add 3 to `y`"], _Canned(["order list `x`", "add to y"]))
    assert got == [("order list `x`", None), (None, "paraphrase lost an identifier or literal")]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = body["temperature"] == 0 and self.headers.get("Authorization") == "Bearer sk-test"
        reply = {"choices": [{"message": {"content": "Very Relevant" if ok else "bad request"}}]}
        data = json.dumps(reply).encode() if self.path == "/v1/chat/completions" else b""
        self.send_response(200 if data else 404)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_backend_over_http(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("CLMEDIT_LLM_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        chat = OpenAIChat("m", base_url=f"http://127.0.0.1:{server.server_port}/v1")
        assert chat.chat([{"role": "user", "content": "judge"}]) == "Very Relevant"
        wrong = OpenAIChat("m", base_url=f"http://127.0.0.1:{server.server_port}/nope", retries=1)
        with pytest.raises(LLMError):
            wrong.chat([{"role": "user", "content": "x"}])
    finally:
        server.shutdown()
    assert make_backend("local").name == "local:smollm2-135m"
    with pytest.raises(ValueError):
        make_backend("nonsense")


def test_cli_import_show_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cases.jsonl"
    res = runner.invoke(app, ["data", "import-clmeeval", str(_release(tmp_path)), "--out", str(out)])
    assert res.exit_code == 0 and "2 cases written" in res.output
    res = runner.invoke(app, ["data", "show", str(out), "-n", "1"])
    assert res.exit_code == 0 and "Table III" in res.output and "reverse list" in res.output
    for args in (
        ["data", "show", str(tmp_path / "missing.jsonl")],
        ["data", "import-clmeeval", str(tmp_path / "missing.json"), "--out", str(out)],
        ["data", "build", "--task", "cnle", "--source", "conala", str(tmp_path / "missing.json")],
        ["data", "build", "--task", "cnle", "--source", "nonsense", str(tmp_path)],
        ["data", "build", "--task", "csne", "--source", "conala", str(out)],
        ["data", "build", "--task", "xyz"],
    ):
        res = runner.invoke(app, args)
        assert (
            res.exit_code == 2
            and "error" in res.output
            and res.exception is None
            or isinstance(res.exception, SystemExit)
        ), args
        assert "Traceback" not in res.output


def test_cli_build_from_python_files(tmp_path):
    src = tmp_path / "pkg"
    src.mkdir()
    body = "\n".join(
        f"def f{i}(items, step={i}):\n    '''Pick every item number {i} from the sequence.'''\n    picked = items[::step]\n    return picked\n"
        for i in range(1, 25)
    )
    (src / "m.py").write_text(body)
    out = tmp_path / "o.jsonl"
    args = [
        "data",
        "build",
        "--task",
        "csne",
        "--source",
        "python-sources",
        str(src),
        "--out",
        str(out),
        "--embedder",
        "bm25",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "4 cases" in res.output and out.is_file() and (tmp_path / "o.stats.json").is_file()


@pytest.mark.slow
def test_local_model_paraphrase_and_judge_run_end_to_end():
    """The default local backend (smollm2-135m) answers; whatever it says is checked or parsed."""
    backend = make_backend("local")
    got = llm_paraphrases(["sort the list `xs` in reverse order"], backend)
    para, problem = got[0]
    assert (para is None) != (problem is None)
    assert para is None or "xs" in para
    kept, counts = judge_examples(
        [RawExample("u", "sort the list `xs`", "sorted(xs)")], backend, min_level=1, progress=False
    )
    assert sum(counts.values()) == 1
