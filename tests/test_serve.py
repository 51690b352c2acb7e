"""`clmedit serve` over real HTTP: a uvicorn server on a free local port, a tiny model, GRACE fixes.

A tiny random model's answers are arbitrary, so a fix's effect is checked as the conformance
suite checks it: the answer to the fix's prompt becomes its target (GRACE with the tiny preset),
while another prompt's answer stays what it was. Taking fixes back must give the earlier answers
exactly, and the model bitwise as it was.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from typer.testing import CliRunner  # noqa: E402

from clmedit.cli import app as cli_app  # noqa: E402
from clmedit.eval.generate import generate  # noqa: E402
from clmedit.models.fingerprint import fingerprint  # noqa: E402
from clmedit.models.text import target_ids  # noqa: E402
from clmedit.models.tiny import tiny_model  # noqa: E402
from clmedit.serve.app import create_app  # noqa: E402
from clmedit.serve.prompts import chat_prompt  # noqa: E402
from clmedit.serve.rwlock import RWLock  # noqa: E402
from clmedit.serve.schemas import Limits  # noqa: E402
from clmedit.serve.store import FixStore  # noqa: E402
from tests.conftest import make_case  # noqa: E402
from tests.test_fix_files import tiny_editor  # noqa: E402

N = 8  # new tokens per answer
TARGETS = ("sorted(xs, reverse=True)", "os.path.join(a, b)", "json.load(f)")


@contextmanager
def serving(directory=None, api_key=None, limits=Limits()):
    """(base URL, store) of a server on a free local port over a fresh tiny llama."""
    model, tok = tiny_model("llama")
    store = FixStore.open(model, tok, "tiny", tiny_editor("grace"), directory)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(store, "tiny", api_key, limits), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", store
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def call(url: str, method: str = "GET", body=None, key: str | None = None, raw: bytes | None = None):
    """(status, JSON reply) of one HTTP request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def answer(url: str, prompt: str, n: int = N) -> str:
    status, reply = call(
        f"{url}/v1/completions", "POST", {"model": "tiny", "prompt": prompt, "max_tokens": n}
    )
    assert status == 200, reply
    return reply["choices"][0]["text"]


def fix_of(i: int) -> tuple[dict, str, str, int]:
    """(a fix as a user posts it, its formatted prompt, the text its answer must become, its tokens)."""
    case = make_case(i, target=TARGETS[i])
    _, tok = tiny_model("llama")
    ids = target_ids(tok, case.prompt, case.target)
    return {"prompt": case.prompt, "target": case.target}, case.prompt, tok.decode(ids), len(ids)


def test_openai_client_completions_chat_and_streaming():
    with serving() as (url, store):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        prompt = make_case(0).prompt
        want = generate(store.model, store.tok, [prompt], max_new_tokens=N)[0]
        got = client.completions.create(model="tiny", prompt=prompt, max_tokens=N)
        assert got.choices[0].text == want and got.usage.completion_tokens <= N
        stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=N, stream=True)
        assert "".join(c.choices[0].text for c in stream) == want

        messages = [{"role": "user", "content": "sort a list in reverse order"}]
        text = chat_prompt(store.tok, [("user", messages[0]["content"])])
        want = generate(store.model, store.tok, [text], max_new_tokens=N)[0]
        chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=N)
        assert chat.choices[0].message.content == want
        stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=N, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == want


def test_concurrent_requests_get_their_own_answers():
    prompts = [make_case(i).prompt for i in range(8)]
    with serving() as (url, store):
        want = [generate(store.model, store.tok, [p], max_new_tokens=N)[0] for p in prompts]
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda p: answer(url, p), prompts)) == want


def test_fixes_added_and_taken_back_live():
    (fix_a, prompt_a, want_a, n_a), (fix_b, prompt_b, want_b, n_b) = fix_of(0), fix_of(1)
    other = make_case(3).prompt
    with serving() as (url, store):
        base = fingerprint(store.model)
        before = {p: answer(url, p) for p in (prompt_a, prompt_b, other)}
        status, added = call(f"{url}/v1/fixes", "POST", {"fixes": [fix_a]})
        assert status == 200, added
        id_a = added["data"][0]["id"]
        assert answer(url, prompt_a, n_a) == want_a and not before[prompt_a].startswith(want_a)
        assert answer(url, other) == before[other]
        id_b = call(f"{url}/v1/fixes", "POST", {"fixes": [fix_b]})[1]["data"][0]["id"]
        listed = call(f"{url}/v1/fixes")[1]["data"]
        assert [(f["id"], f["target"]) for f in listed] == [(id_a, TARGETS[0]), (id_b, TARGETS[1])]
        assert all(f["added"] for f in listed)

        assert call(f"{url}/v1/fixes/{id_a}", "DELETE")[0] == 200  # the older one: b is applied again
        assert answer(url, prompt_a) == before[prompt_a]
        assert answer(url, prompt_b, n_b) == want_b
        assert [f["id"] for f in call(f"{url}/v1/fixes")[1]["data"]] == [id_b]
        assert call(f"{url}/v1/fixes/{id_b}", "DELETE")[0] == 200
        assert {p: answer(url, p) for p in before} == before
        assert fingerprint(store.model) == base  # bitwise the base model again
        assert call(f"{url}/v1/fixes/{id_b}", "DELETE")[0] == 404


def test_fix_file_follows_every_change_and_reloads(tmp_path):
    fixes = [fix_of(i) for i in range(3)]
    with serving(tmp_path / "fix") as (url, _):
        status, added = call(f"{url}/v1/fixes", "POST", {"fixes": [f for f, *_ in fixes[:2]]})
        assert status == 200, added
        call(f"{url}/v1/fixes", "POST", {"fixes": [fixes[2][0]]})
        call(f"{url}/v1/fixes/{added['data'][1]['id']}", "DELETE")
        listed = call(f"{url}/v1/fixes")[1]["data"]
        answers = {p: answer(url, p) for _, p, *_ in fixes}
        assert answer(url, fixes[2][1], fixes[2][3]) == fixes[2][2]
    with serving(tmp_path / "fix") as (url, store):  # a restart: a new model, the fix file loaded
        assert call(f"{url}/v1/fixes")[1]["data"] == listed
        assert {p: answer(url, p) for _, p, *_ in fixes} == answers
        for fix in listed:
            call(f"{url}/v1/fixes/{fix['id']}", "DELETE")
    assert not any((tmp_path / "fix").iterdir())  # no fix left: an empty folder to start from
    with serving(tmp_path / "fix") as (url, _):
        assert call(f"{url}/v1/fixes")[1]["data"] == []


def test_bad_requests_get_the_api_error_shape():
    limits = Limits(max_body_bytes=4096, max_tokens=32)
    with serving(limits=limits) as (url, store):
        prompt = make_case(0).prompt
        cases = [
            (400, dict(raw=b"{not json")),
            (400, dict(body={"model": "tiny"})),  # no prompt
            (400, dict(body={"model": "tiny", "prompt": prompt, "max_tokens": 33})),
            (400, dict(body={"model": "tiny", "prompt": prompt, "n": 2})),
            (400, dict(body={"model": "tiny", "prompt": prompt, "temperature": -1})),
            (400, dict(body={"model": "tiny", "prompt": "x " * 600, "max_tokens": 32})),  # past the context
            (404, dict(body={"model": "gpt-4", "prompt": prompt})),
            (413, dict(body={"model": "tiny", "prompt": "x" * 5000})),
        ]
        for status, kwargs in cases:
            got, reply = call(f"{url}/v1/completions", "POST", **kwargs)
            assert got == status, (kwargs, reply)
            assert set(reply["error"]) >= {"message", "type"} and "Traceback" not in reply["error"]["message"]
        assert call(f"{url}/v1/chat/completions", "POST", {"model": "tiny", "messages": []})[0] == 400
        assert call(f"{url}/v1/fixes", "POST", {"fixes": [{"prompt": prompt}]})[0] == 400  # no target
        assert call(f"{url}/v1/fixes", "POST", {"fixes": [{"prompt": prompt, "target": "x"}, "y"]})[0] == 400
        assert call(f"{url}/v1/nothing")[0] == 404
        assert store.cases == [] and answer(url, prompt) == generate(store.model, store.tok, [prompt], N)[0]


def test_a_keyed_server_refuses_requests_without_the_key():
    with serving(api_key="s3cret") as (url, _):
        for key in (None, "wrong"):
            status, reply = call(f"{url}/v1/models", key=key)
            assert status == 401 and "s3cret" not in json.dumps(reply)
            assert call(f"{url}/v1/fixes", "POST", {"fixes": [fix_of(0)[0]]}, key=key)[0] == 401
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="tiny", prompt="x = ", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_serving_other_machines_needs_a_key(monkeypatch):
    monkeypatch.delenv("CLMEDIT_API_KEY", raising=False)
    done = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert done.exit_code == 2 and "--api-key" in done.output


def test_a_load_folder_holding_other_files_is_refused(tmp_path):
    """The server replaces its fix file's folder whole on every change, so a folder holding anything
    else is refused before the model loads, and left as it was."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    done = CliRunner().invoke(cli_app, ["serve", "--model", "no/such-model", "--load", str(folder)])
    assert done.exit_code == 2 and "notes.txt" in done.output
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_change_that_fails_leaves_the_model_as_it_was(tmp_path):
    """The fix file cannot be written (a file where its new folder goes): the add, then a take-back
    that had applied a fix again, fail with a 500; the model answers as before each, and the fix
    file on disk still holds the fixes it held."""
    fixes = [fix_of(i) for i in range(3)]
    with serving(tmp_path / "fix") as (url, store):
        ids = [
            f["id"] for f in call(f"{url}/v1/fixes", "POST", {"fixes": [f for f, *_ in fixes[:2]]})[1]["data"]
        ]
        before = {p: answer(url, p) for _, p, *_ in fixes}
        state = fingerprint(store.model)
        (tmp_path / ".fix.new").write_text("in the way")
        for method, path, body in (
            ("POST", "/v1/fixes", {"fixes": [fixes[2][0]]}),
            ("DELETE", f"/v1/fixes/{ids[0]}", None),
        ):
            status, reply = call(f"{url}{path}", method, body)
            assert status == 500 and "nothing was changed" in reply["error"]["message"]
            assert [f["id"] for f in call(f"{url}/v1/fixes")[1]["data"]] == ids
            assert {p: answer(url, p) for _, p, *_ in fixes} == before
        assert fingerprint(store.model) == state
        (tmp_path / ".fix.new").unlink()
    with serving(tmp_path / "fix") as (url, _):
        assert [f["id"] for f in call(f"{url}/v1/fixes")[1]["data"]] == ids
        assert {p: answer(url, p) for _, p, *_ in fixes} == before


def test_a_save_cut_between_its_renames_is_finished_at_start(tmp_path):
    fix, prompt, want, n = fix_of(0)
    with serving(tmp_path / "fix") as (url, _):
        listed = call(f"{url}/v1/fixes", "POST", {"fixes": [fix]})[1]["data"]
    (tmp_path / "fix").rename(tmp_path / ".fix.new")  # the new folder whole, the old one renamed away
    (tmp_path / ".fix.old").mkdir()
    with serving(tmp_path / "fix") as (url, _):
        assert [f["id"] for f in call(f"{url}/v1/fixes")[1]["data"]] == [f["id"] for f in listed]
        assert answer(url, prompt, n) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fix"]


def test_an_edit_waits_for_running_generations_and_holds_new_ones_back():
    lock, order = RWLock(), []
    reading, writer_waits = threading.Event(), threading.Event()

    def generation(name: str, hold: threading.Event | None = None) -> None:
        with lock.read():
            order.append(f"{name} starts")
            if hold is not None:
                reading.set()
                hold.wait(5)
            order.append(f"{name} ends")

    def edit() -> None:
        writer_waits.set()
        with lock.write():
            order.append("edit")

    release = threading.Event()
    threads = [threading.Thread(target=generation, args=("running", release))]
    threads[0].start()
    reading.wait(5)
    threads.append(threading.Thread(target=edit))
    threads[1].start()
    writer_waits.wait(5)
    time.sleep(0.1)  # the edit is now waiting for the running generation
    threads.append(threading.Thread(target=generation, args=("new",)))
    threads[2].start()
    time.sleep(0.1)
    assert order == ["running starts"]  # neither the edit nor the new generation ran
    release.set()
    for t in threads:
        t.join(5)
    assert order == ["running starts", "running ends", "edit", "new starts", "new ends"]


def test_stop_strings_and_sampling():
    prompt = make_case(0).prompt
    with serving() as (url, store):
        full = generate(store.model, store.tok, [prompt], max_new_tokens=N)[0]
        stop = full[len(full) // 2 : len(full) // 2 + 2]
        cut = full[: full.index(stop)]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        got = client.completions.create(model="tiny", prompt=prompt, max_tokens=N, stop=[stop])
        assert (got.choices[0].text, got.choices[0].finish_reason) == (cut, "stop")
        stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=N, stop=stop, stream=True)
        assert "".join(c.choices[0].text for c in stream) == cut
        sampled = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=N, temperature=1.5, top_p=0.9
        )
        assert sampled.choices[0].finish_reason in ("stop", "length") and sampled.usage.completion_tokens <= N


@pytest.mark.parametrize("name", ["grace", "ft"])
def test_taking_fixes_back_in_any_order_gives_the_base_model_back(name):
    """A codebook editor and a weight editor: every take-back leaves the others live, the last the base."""
    model, tok = tiny_model("llama")
    store = FixStore.open(model, tok, "tiny", tiny_editor(name), None)
    base = fingerprint(model)
    store.add([make_case(0, target=TARGETS[0]), make_case(1, target=TARGETS[1])])
    with_two = fingerprint(model)
    store.add([make_case(2, target=TARGETS[2])])
    third = store.cases[-1].case_id
    store.delete(third)
    assert fingerprint(model) == with_two  # the newest: its restore alone
    store.add([make_case(2, target=TARGETS[2])])
    for case in list(store.cases):
        store.delete(case.case_id)
        assert case.case_id not in {c.case_id for c in store.cases}
    assert store.cases == [] and fingerprint(model) == base
