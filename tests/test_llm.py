"""The openai-backed chat backend against a real chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clmedit.data.judge import judge_examples
from clmedit.data.llm import LLMError, OpenAIChat
from clmedit.data.sources import RawExample
from clmedit.errors import ClmeditError

KEY = "sk-clmedit-secret-123"


class _Server(ThreadingHTTPServer):
    """Speaks POST /v1/chat/completions; `script` lists the status of each call (then 200)."""

    def __init__(self, script: list[int] | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script or [])
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.script.pop(0) if self.server.script else 200
        if self.path != "/v1/chat/completions":
            status = 404
        if status == 200:
            content = "Very Relevant" if "Task:" in body["messages"][-1]["content"] else "a paraphrase"
            reply = {
                "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
            }  # fmt: skip
        else:
            reply = {"error": {"message": f"status {status}", "type": "server_error"}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def env_key(monkeypatch):
    monkeypatch.setenv("CLMEDIT_LLM_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_chat_sends_the_request_and_the_key_from_the_environment(server, env_key, caplog):
    caplog.set_level(logging.DEBUG)
    chat = OpenAIChat("judge-model", base_url=server.url)
    assert chat.chat([{"role": "user", "content": "hello"}], max_tokens=7) == "a paraphrase"
    headers, body = server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 7
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in caplog.text  # never logged


def test_no_key_works_for_a_local_server_and_is_explained_for_openai(server, monkeypatch):
    monkeypatch.delenv("CLMEDIT_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("CLMEDIT_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert OpenAIChat("m", base_url=server.url).chat([{"role": "user", "content": "x"}]) == "a paraphrase"
    with pytest.raises(ClmeditError, match="OPENAI_API_KEY"):
        OpenAIChat("gpt-4o").chat([{"role": "user", "content": "x"}])  # refused before any request


def test_transient_errors_are_retried_then_answered(server, env_key):
    server.script = [503, 429]
    assert OpenAIChat("m", base_url=server.url, retries=3).chat([{"role": "user", "content": "x"}])
    assert len(server.requests) == 3


def test_a_lasting_error_becomes_an_llm_error_naming_the_status(server, env_key):
    server.script = [400]
    with pytest.raises(LLMError, match="HTTP 400"):
        OpenAIChat("m", base_url=server.url, retries=3).chat([{"role": "user", "content": "x"}])
    assert len(server.requests) == 1  # a client error is not retried
    server.script = [503, 503]
    with pytest.raises(LLMError, match="HTTP 503"):
        OpenAIChat("m", base_url=server.url, retries=2).chat([{"role": "user", "content": "x"}])


def test_unreachable_endpoint_is_an_llm_error(env_key):
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as probe:
        port = probe.server_port  # closed again below: nothing listens there
    with pytest.raises(LLMError, match="127.0.0.1"):
        OpenAIChat("m", base_url=f"http://127.0.0.1:{port}/v1", retries=1, timeout=5).chat(
            [{"role": "user", "content": "x"}]
        )


def test_missing_openai_package_says_what_to_install(monkeypatch, env_key):
    monkeypatch.setitem(sys.modules, "openai", None)  # what `import openai` sees when it is not installed
    with pytest.raises(ClmeditError, match=r"pip install 'clmedit\[openai\]'"):
        OpenAIChat("m", base_url="http://127.0.0.1:9/v1").chat([{"role": "user", "content": "x"}])


def test_a_configuration_error_stops_the_judge_instead_of_skipping_each_pair(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    examples = [RawExample(uid="a", input="sort a list", output="sorted(xs)")]
    with pytest.raises(ClmeditError):
        judge_examples(examples, OpenAIChat("m", base_url="http://127.0.0.1:9/v1"), progress=False)


def test_judge_over_the_openai_backend(server, env_key):
    examples = [RawExample(uid="a", input="sort a list", output="sorted(xs)")]
    kept, counts = judge_examples(examples, OpenAIChat("m", base_url=server.url), progress=False)
    assert [ex.uid for ex in kept] == ["a"] and counts["Very Relevant"] == 1
    assert "Task: sort a list" in server.requests[0][1]["messages"][0]["content"]
