"""Shared fixtures: tiny random models of every family and small hand-made edit cases."""

from __future__ import annotations

import pytest
import torch

from clmedit.data.schema import EditCase, Neighbour, format_prompt
from clmedit.files import cache_root
from clmedit.models.text import prompt_ids
from clmedit.models.tiny import FAMILIES, tiny_model


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests write answers, statistics and features into a cache of their own, never the user's.

    Only the expensive, content-checked parts of the user's cache are shared (the converted default
    model and the built default datasets), so slow tests do not rebuild them on every run.
    """
    user = cache_root()
    private = tmp_path_factory.mktemp("clmedit-cache")
    for shared in ("models", "data"):
        (user / shared).mkdir(parents=True, exist_ok=True)
        (private / shared).symlink_to(user / shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLMEDIT_CACHE", str(private))
        yield private


@pytest.fixture(params=FAMILIES)
def family_model(request):
    """(family, model, tok) for every supported family."""
    model, tok = tiny_model(request.param)
    return request.param, model, tok


@pytest.fixture
def llama_tiny():
    return tiny_model("llama")


@pytest.fixture
def tiny_dir(tmp_path_factory):
    """The tiny llama saved as a folder, usable as `--model`."""
    folder = tmp_path_factory.mktemp("tiny")
    model, tok = tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_case(i: int = 0, task: str = "cnle", target: str = "sorted(xs, reverse=True)") -> EditCase:
    """A small CNLE case with distinct prompt, rephrase and five neighbours."""
    intents = [
        "sort a list in reverse order",
        "join two paths",
        "read a json file",
        "square each item",
        "strip spaces from a string",
        "print numbers up to ten",
        "add two numbers",
    ]
    text = intents[i % len(intents)] + (f" {i}" if i >= len(intents) else "")
    return EditCase(
        case_id=f"case-{i}",
        task=task,
        prompt=format_prompt(task, text),
        target=target,
        rephrase=format_prompt(task, "order the list descending " + str(i)),
        neighbours=[
            Neighbour(prompt=format_prompt(task, f"{intents[(i + k) % len(intents)]} variant {k}"))
            for k in range(1, 6)
        ],
    )


@pytest.fixture
def cases():
    return [
        make_case(i, target=t)
        for i, t in enumerate(["sorted(xs, reverse=True)", "os.path.join(a, b)", "json.load(f)"])
    ]


def greedy_ids(model, tok, prompt: str, n: int) -> list[int]:
    """The ids of `n` greedily generated tokens after `prompt` (unpadded, one row)."""
    ids = torch.tensor([prompt_ids(tok, prompt)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()
