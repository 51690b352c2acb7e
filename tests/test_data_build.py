"""The build pipeline: each step, a build from real CoNaLa and from Python files, caching."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clmedit.data.build import (
    BuildConfig,
    build_dataset,
    dedupe,
    default_dataset,
    split,
    stats_path,
)
from clmedit.data.neighbours import SentenceEmbedder, bm25_knn, knn
from clmedit.data.schema import probe_texts, read_cases
from clmedit.data.sources import RawExample
from clmedit.data.unprobed import read_unprobed, unprobed_path

CONALA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conala" / "conala-train.json"


def _ex(i, text=None, output="x", split_name=None):
    return RawExample(f"u{i}", text or f"input {i}", output, split=split_name)


def test_dedupe_prefers_examples_with_output():
    exs = [_ex(0, "Sort  a list", None), _ex(1, "sort a list"), _ex(2, "other"), _ex(3, "Other")]
    skipped = Counter()
    out = dedupe(exs, "cnle", skipped)
    assert [e.uid for e in out] == ["u1", "u2"] and skipped["duplicate input"] == 2
    assert (
        len(
            dedupe(
                [_ex(0, "def f(): pass"), _ex(1, "def f():  pass"), _ex(2, "def F(): pass")],
                "csne",
                Counter(),
            )
        )
        == 2
    )


def test_split_proportions_and_source_test_split():
    exs = [_ex(i) for i in range(600)] + [_ex(600 + i, output=None) for i in range(60)]
    targeted, pool = split(exs, "cnle", seed=0)
    assert len(targeted) == 110 and all(e.output for e in targeted)  # round(660 / 6)
    assert {e.uid for e in targeted}.isdisjoint(e.uid for e in pool) and len(targeted) + len(pool) == 660
    assert [e.uid for e in split(exs, "cnle", seed=0)[0]] == [e.uid for e in targeted]
    assert [e.uid for e in split(exs, "cnle", seed=1)[0]] != [e.uid for e in targeted]
    csn = [_ex(i, split_name="test" if i % 4 == 0 else "train") for i in range(40)]
    t, p = split(csn, "csne", seed=0)
    assert sorted(int(e.uid[1:]) for e in t) == list(range(0, 40, 4)) and all(e.split == "train" for e in p)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((3000, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    pool[7] = pool[3]  # an exact tie: the lower index must come first
    queries = np.vstack([pool[3], rng.standard_normal((299, 16)).astype(np.float32)])
    idx, scores = knn(queries, pool, 5, chunk=64)
    brute = np.argsort(-(queries @ pool.T), axis=1, kind="stable")[:, :5]
    assert (idx == brute).all() and idx[0, 0] == 3 and idx[0, 1] == 7
    assert np.allclose(scores, np.take_along_axis(queries @ pool.T, brute, axis=1), atol=1e-5)


def test_bm25_neighbours_match_rank_bm25():
    from rank_bm25 import BM25Okapi

    from clmedit.data.neighbours import bm25_tokens

    pool = [
        f"{w} item number {i}"
        for i, w in enumerate(["sortList", "read_json", "join paths", "sort items"] * 10)
    ]
    queries = ["sort the list", "read json file", "join two paths"]
    idx, scores = bm25_knn(queries, pool, 5, chunk=2)
    ref = BM25Okapi([bm25_tokens(t) for t in pool])
    for q, row, sc in zip(queries, idx, scores):
        s = ref.get_scores(bm25_tokens(q))
        assert (row == np.argsort(-s, kind="stable")[:5]).all() and np.allclose(sc, s[row], atol=1e-5)


def test_minilm_embedder_nearest_are_true_nearest():
    emb = SentenceEmbedder()
    texts = ["sort a list in reverse", "reverse the order of a list", "open a file for reading", "read a json file",
             "add two integers", "sum of two numbers", "join directory paths", "concatenate path parts"]  # fmt: skip
    vecs = emb.encode(texts)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    idx, _ = knn(vecs[::2], vecs, 2)
    assert (idx[:, 0] == np.arange(0, 8, 2)).all()  # itself first
    assert list(idx[:, 1]) == [1, 3, 5, 7]  # then its paraphrase


@pytest.mark.skipif(not CONALA.is_file(), reason="shared CoNaLa file absent")
def test_build_from_conala_yields_valid_cases(tmp_path):
    out = tmp_path / "cnle.jsonl"
    cfg = BuildConfig(
        task="cnle", source="conala", paths=(str(CONALA),), embedder="bm25", limit=40, progress=False
    )
    result = build_dataset(cfg, out)
    cases = read_cases(out)
    assert len(cases) == 40 and len({c.case_id for c in cases}) == 40
    stats = json.loads(stats_path(out).read_text())
    assert stats["counts"]["read"] > 2000 and stats["counts"]["targeted"] == round(
        stats["counts"]["after dedupe"] / 6
    )
    assert stats["lengths"]["input"]["n"] == 40 and stats["rephrase_kinds"].get("human", 0) >= 1
    pool_inputs = {n.prompt for c in cases for n in c.neighbours}
    for case in cases:
        assert case.prompt.startswith("Intent: ") and case.prompt.endswith("\nCode:") and case.target
        assert case.rephrase != case.prompt and len(case.neighbours) == 5
        assert case.prompt not in pool_inputs  # neighbours come from the non-targeted pool
    assert result.cases[0].meta["rephrase_kind"] in ("human", "rule")
    # every other input of the source is written beside the cases, none of them a probe
    unprobed = read_unprobed(out)
    assert unprobed == result.unprobed and stats["counts"]["unprobed"] == len(unprobed)
    assert len(unprobed) > 2000 - 7 * 40 and not set(unprobed) & probe_texts(cases)
    assert all(t.startswith("Intent: ") and t.endswith("\nCode:") for t in unprobed)
    build_dataset(cfg, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()  # deterministic
    assert read_unprobed(tmp_path / "again.jsonl") == unprobed


def test_unprobed_file_lines_that_are_not_a_prompt_are_skipped(tmp_path, caplog):
    cases = tmp_path / "c.jsonl"
    assert read_unprobed(cases) == []  # data built elsewhere has none
    unprobed_path(cases).write_text(
        '{"prompt": "Intent: a\\nCode:"}\nnot json\n{"prompt": 3}\n{"text": "x"}\n{"prompt": "Intent: a\\nCode:"}\n'
    )
    with caplog.at_level("WARNING"):
        assert read_unprobed(cases) == ["Intent: a\nCode:"]
    assert "skipped 3 line(s)" in caplog.text


def test_build_csne_from_python_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    funcs = []
    for i in range(36):
        funcs.append(
            f"def func_{i}(value, count={i}):\n    '''Compute variant {i} of the scaled total value.'''\n"
            f"    total = value * count + {i}\n    return [total for _ in range(count)]\n"
        )
    (src / "mod.py").write_text("\n".join(funcs))
    (src / "bad.py").write_text("def broken(:\n")
    out = tmp_path / "csne.jsonl"
    result = build_dataset(
        BuildConfig(task="csne", source="python-sources", paths=(str(src),), embedder="bm25", progress=False),
        out,
    )
    assert len(result.cases) == 6 and result.stats["skipped"]["syntax error"] == 1
    for case in result.cases:
        assert case.prompt.startswith("Code: def func_") and case.target.startswith("Compute variant")
        assert (
            "'''" not in case.prompt
            and case.rephrase != case.prompt
            and case.meta["rephrase_kind"] == "rename"
        )
        assert set(case.meta["renamed"]) == {"value", "count", "total"}
    assert stats_path(out).is_file()


def test_default_dataset_cached_and_good_cnle(tmp_path, monkeypatch):
    calls = []
    import clmedit.data.build as build

    real = build.build_dataset

    def counting(cfg, out, *a, **kw):
        calls.append(cfg)
        return real(cfg.model_copy(update={"embedder": "bm25", "progress": False}), out, *a, **kw)

    monkeypatch.setattr(build, "build_dataset", counting)
    path = default_dataset("cnle", cache_dir=tmp_path, limit=30, seed=3)
    assert default_dataset("cnle", cache_dir=tmp_path, limit=30, seed=3) == path and len(calls) == 1
    assert path.parent == tmp_path / "data" and "seed3" in path.name and "cnle" in path.name
    cases = read_cases(path)
    assert (
        len(cases) == 30 and calls[0].embedder == "minilm"
    )  # the default config, bm25 only to be quick here
    for case in cases:
        assert len(case.target) <= 64 and "\n" not in case.target
        assert case.target not in ("None", "self", "True", "False") and case.meta["rephrase_kind"] == "rule"
