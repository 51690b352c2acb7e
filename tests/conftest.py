"""Shared fixtures: tiny random models of every family and small hand-made edit cases."""

from __future__ import annotations

import pytest

from clmedit.data.schema import EditCase, Neighbour, format_prompt
from clmedit.models.tiny import FAMILIES, tiny_model


@pytest.fixture(params=FAMILIES)
def family_model(request):
    """(family, model, tok) for every supported family."""
    model, tok = tiny_model(request.param)
    return request.param, model, tok


@pytest.fixture
def llama_tiny():
    return tiny_model("llama")


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
