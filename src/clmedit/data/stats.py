"""Dataset statistics: the study's Table III (lengths per field) and Table II (judge levels).

Lengths are counted in tokens of a `TokenCounter`: a real tokenizer when one is configured, else
a fast offline proxy (regex words and single punctuation marks: `\\w+|[^\\w\\s]`), whose `name` says which.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clmedit.data.schema import PROMPT_TEMPLATES, EditCase

_PROXY = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class TokenCounter:
    name: str
    count: Callable[[str], int]


def token_counter(tokenizer: str | None = None) -> TokenCounter:
    """Token counts of `tokenizer` (a HF tokenizer name or path), or the regex proxy when None."""
    if tokenizer is None:
        return TokenCounter("regex proxy \\w+|[^\\w\\s]", lambda text: len(_PROXY.findall(text)))
    if tokenizer == "smollm2-135m":
        from clmedit.models.load import default_model_dir

        tokenizer = str(default_model_dir())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return TokenCounter(
        f"tokenizer {tokenizer}", lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    )


def raw_input(task: str, prompt: str) -> str:
    """Undo the task template: the raw intent or code of a formatted prompt."""
    head, _, tail = PROMPT_TEMPLATES[task].partition("{text}")
    if prompt.startswith(head) and prompt.endswith(tail):
        return prompt[len(head) : len(prompt) - len(tail)]
    return prompt


def _summary(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "n": 0}
    return {
        "mean": round(statistics.fmean(values), 2),
        "median": float(statistics.median(values)),
        "n": len(values),
    }


def length_table(
    cases: Sequence[EditCase], counter: TokenCounter | None = None
) -> dict[str, dict[str, float]]:
    """Table III: mean/median token length of input, target, rephrase and neighbour inputs."""
    counter = counter or token_counter()
    fields = {"input": [], "target": [], "rephrase": [], "neighbour": []}
    for case in cases:
        fields["input"].append(counter.count(raw_input(case.task, case.prompt)))
        fields["target"].append(counter.count(case.target))
        fields["rephrase"].append(counter.count(raw_input(case.task, case.rephrase)))
        fields["neighbour"] += [counter.count(raw_input(case.task, n.prompt)) for n in case.neighbours]
    return {name: _summary(values) for name, values in fields.items()}


def dataset_stats(
    config: dict,
    counts: dict[str, int],
    skipped: Counter,
    timings: dict[str, float],
    cases: Sequence[EditCase],
    counter: TokenCounter,
    judge_counts: Counter | None = None,
) -> dict:
    """The `<name>.stats.json` of a build: config, counts, skip reasons, Table III, Table II, timings."""
    return {
        "task": config["task"],
        "config": config,
        "python": sys.version.split()[0],
        "token_counter": counter.name,
        "counts": counts,
        "skipped": dict(sorted(skipped.items())),
        "rephrase_kinds": dict(Counter(c.meta.get("rephrase_kind") for c in cases)),
        "lengths": length_table(cases, counter),
        "judge": dict(judge_counts) if judge_counts is not None else None,
        "timings": timings,
    }


def stats_path(path: str | Path) -> Path:
    """`data/x.jsonl` -> `data/x.stats.json`."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".gz").removesuffix(".jsonl") + ".stats.json")


def format_stats(stats: dict) -> str:
    """Human-readable Table III (and Table II when a judge ran) for `clmedit data show`."""
    lines = [f"cases: {stats.get('counts', {}).get('cases', '?')}  task: {stats.get('task', '?')}"]
    if stats.get("counts"):
        lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in stats["counts"].items()))
    if stats.get("skipped"):
        lines.append("skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(stats["skipped"].items())))
    if stats.get("rephrase_kinds"):
        lines.append("rephrase kinds: " + ", ".join(f"{k}={v}" for k, v in stats["rephrase_kinds"].items()))
    lines.append(f"Table III (lengths in {stats.get('token_counter', 'regex proxy')} tokens)")
    lines.append(f"  {'field':<10} {'mean':>8} {'median':>8} {'n':>7}")
    for field, row in stats.get("lengths", {}).items():
        lines.append(f"  {field:<10} {row['mean']:>8.2f} {row['median']:>8.1f} {row['n']:>7}")
    if stats.get("judge"):
        lines.append("Table II (judge levels)")
        lines += [f"  {level:<16} {n:>7}" for level, n in stats["judge"].items()]
    return "\n".join(lines)
