"""Caches know what they hold: keyed by model fingerprint, validated on read, rebuilt when damaged."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time

import pytest
import torch

from clmedit.data.schema import write_cases
from clmedit.errors import InputError
from clmedit.grid.cell import run
from clmedit.models.fingerprint import model_fingerprint
from clmedit.models.load import load_model
from clmedit.models.tiny import tiny_model
from clmedit.run import records
from clmedit.run.prepare import answers_fingerprint, answers_path, ensure_base_answers
from clmedit.run.settings import RunConfig
from tests.conftest import make_case

RELEASE = "CodeLlama-7b-hf"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _save(folder, seed):
    shutil.rmtree(folder, ignore_errors=True)
    model, tok = tiny_model("llama", seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_fingerprint_names_weights_tokenizer_and_dtype():
    model, tok = tiny_model("llama")
    fp = model_fingerprint(model, tok)
    assert len(fp) == 16 and model_fingerprint(*tiny_model("llama")) == fp
    assert model_fingerprint(tiny_model("llama", seed=1)[0], tok) != fp
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] += 1.0  # the first sampled element
    assert model_fingerprint(model, tok) != fp
    other, _ = tiny_model("llama")
    tok = copy.deepcopy(tok)  # the tiny tokenizer is shared between tests
    tok(["a", "bb c"], padding=True, truncation=True, max_length=8)  # transient settings do not count
    assert model_fingerprint(other, tok) == fp
    tok.add_special_tokens({"additional_special_tokens": ["<x>"]})
    assert model_fingerprint(other, tok) != fp
    assert model_fingerprint(other.to(torch.bfloat16)) != model_fingerprint(tiny_model("llama")[0])


def test_a_model_replaced_at_the_same_path_gets_its_own_answers(tmp_path):
    """Unedited specificity is 100 for each model, although both were loaded from one folder."""
    folder, data = tmp_path / "model", write_cases(tmp_path / "cases.jsonl", [make_case(0)])
    outputs = []
    for seed in (0, 1):
        _save(folder, seed)
        model, tok = load_model(str(folder), device="cpu")
        out = run(RunConfig(data=str(data), out=tmp_path / f"r{seed}", fluency=False), model, tok)
        (rec,) = records.read_records(out)
        assert rec.scores.specificity.em == 1.0
        outputs.append(rec.scores.outputs.neighbours)
    assert outputs[0] != outputs[1]  # two different models indeed


def test_a_garbled_answers_file_is_rebuilt(llama_tiny, caplog):
    model, tok = llama_tiny
    path = answers_path(answers_fingerprint(model, tok))
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "answers": {"Intent: x')
    cases = [make_case(0)]
    with caplog.at_level(logging.WARNING):
        assert ensure_base_answers(model, tok, cases) == 5
    assert str(path) in caplog.text
    saved = json.loads(path.read_text())["answers"]
    assert saved == {n.prompt: n.answers["tiny-llama"] for n in cases[0].neighbours}


def test_answers_in_the_case_file_under_the_model_name_are_not_trusted(llama_tiny):
    model, tok = llama_tiny
    case = make_case(0)
    for n in case.neighbours:
        n.answers["tiny-llama"] = "stale answer of another model"
    assert ensure_base_answers(model, tok, [case]) == 5
    assert all(n.answers["tiny-llama"] != "stale answer of another model" for n in case.neighbours)


def _released(i=0):
    case = make_case(i)
    case.meta["source"] = "clmeeval"
    for k, n in enumerate(case.neighbours):
        n.answers[RELEASE] = f"released {k}"
    return case


def test_release_answers_are_used_when_named_or_matched_by_model_name(llama_tiny):
    model, tok = llama_tiny
    cases = [_released()]
    assert ensure_base_answers(model, tok, cases, answers_from=RELEASE) == 0
    assert [n.answers["tiny-llama"] for n in cases[0].neighbours] == [f"released {k}" for k in range(5)]
    cases = [_released()]
    assert ensure_base_answers(model, tok, cases, model_name="codellama/codellama-7b-hf") == 0
    assert cases[0].neighbours[0].answers["codellama/codellama-7b-hf"] == "released 0"


def test_release_answers_that_match_nothing_warn_and_a_wrong_key_is_an_error(llama_tiny, caplog):
    model, tok = llama_tiny
    with caplog.at_level(logging.WARNING):
        assert ensure_base_answers(model, tok, [_released()]) == 5
    assert RELEASE in caplog.text and "--answers-from" in caplog.text
    with pytest.raises(InputError, match=RELEASE):
        ensure_base_answers(model, tok, [_released()], answers_from="CodeQwen1.5-7B")


def test_run_config_takes_the_release_key(llama_tiny, tmp_path):
    model, tok = llama_tiny
    data = write_cases(tmp_path / "c.jsonl", [_released()])
    config = RunConfig(data=str(data), out=tmp_path / "r", fluency=False, answers_from=RELEASE)
    (rec,) = records.read_records(run(config, model, tok))
    assert rec.scores.specificity.em == 0.0  # the tiny model does not say "released k"


def test_stats_of_a_replaced_model_are_recomputed(tmp_path):
    from clmedit.locate.stats import layer_stats

    corpus = tmp_path / "corpus.py"
    corpus.write_text("def add(a, b):\n    return a + b\n" * 20)
    got = []
    for seed in (0, 1):
        model, tok = tiny_model("llama", seed=seed)
        model.config.clmedit_name = "same-name"
        got.append(layer_stats(model, tok, [1], corpus, samples=2, seq_len=16)[1])
    assert not torch.allclose(got[0], got[1])


def test_a_default_dataset_cut_in_half_is_rebuilt(tmp_path, monkeypatch):
    import clmedit.data.build as build

    src = tmp_path / "src"
    src.mkdir()
    (src / "m.py").write_text("".join(
        f'def f{i}(values, n):\n    """Return the sum of the first {i} values times n."""\n'
        f"    return sum(values[:{i}]) * n + {i}\n\n" for i in range(60)
    ))  # fmt: skip
    real, calls = build.build_dataset, []

    def quick(cfg, out):  # the real pipeline on a small source (the stdlib takes ~20 s)
        calls.append(cfg)
        update = {"source": "python-sources", "paths": (str(src),), "embedder": "bm25", "progress": False}
        return real(cfg.model_copy(update=update), out)

    monkeypatch.setattr(build, "build_dataset", quick)
    path = build.default_dataset("cnle", cache_dir=tmp_path, limit=6)
    whole = path.read_text().splitlines(keepends=True)
    assert len(whole) == 6 and build.default_dataset("cnle", cache_dir=tmp_path, limit=6) == path
    path.write_text("".join(whole[:3]))
    assert build.default_dataset("cnle", cache_dir=tmp_path, limit=6) == path and len(calls) == 2
    assert path.read_text().splitlines(keepends=True) == whole


def test_a_cut_safetensors_in_a_model_folder_names_the_file(tmp_path):
    folder = tmp_path / "m"
    _save(folder, 0)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(InputError, match="model.safetensors"):
        load_model(str(folder), device="cpu")


def test_fingerprint_is_cheap():
    model, tok = tiny_model("llama")
    model_fingerprint(model, tok)
    start = time.perf_counter()
    model_fingerprint(model, tok)
    assert time.perf_counter() - start < 0.5


@pytest.mark.slow
def test_a_cut_default_model_cache_is_rebuilt(cache):
    """A truncated cached model.safetensors of the default model is detected and rebuilt from its GGUF."""
    from clmedit.models.load import DEFAULT_MODEL, default_model_dir, folder_problem

    target = default_model_dir()
    weights = target / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    assert folder_problem(target) is not None
    model, tok = load_model(DEFAULT_MODEL, device="cpu")
    assert folder_problem(target) is None and model.config.clmedit_name == DEFAULT_MODEL
