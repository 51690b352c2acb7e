"""The 5-level relevance judge (the study's CNLE filter): does the snippet do what the intent says?

Levels 1..5 = Very Irrelevant, Irrelevant, Neutral, Relevant, Very Relevant; by default only
Very Relevant pairs are kept. The backend decodes at temperature 0; `parse_level` reads the
level from free text robustly (a level name, or a digit 1-5), None when it cannot.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence

from tqdm import tqdm

from clmedit.data.llm import ChatBackend, LLMError
from clmedit.data.sources import RawExample

log = logging.getLogger(__name__)

LEVELS = ("Very Irrelevant", "Irrelevant", "Neutral", "Relevant", "Very Relevant")
UNPARSED = "Unparsed"

JUDGE_PROMPT = (
    "You judge whether a Python code snippet implements a task description.\n"
    "Task: {intent}\nCode: {snippet}\n"
    "Answer with exactly one of: Very Irrelevant, Irrelevant, Neutral, Relevant, Very Relevant."
)

# Longest names first, so "very irrelevant" is not read as "irrelevant" or "relevant".
_NAMES = sorted(((name.lower(), i + 1) for i, name in enumerate(LEVELS)), key=lambda p: -len(p[0]))
_ALIASES = {"not relevant": 2, "somewhat relevant": 3, "partially relevant": 3, "highly relevant": 5,
            "extremely relevant": 5, "completely irrelevant": 1, "totally irrelevant": 1}  # fmt: skip


def parse_level(text: str) -> int | None:
    """The level 1..5 named first in `text` (names or aliases win over digits), or None."""
    low = re.sub(r"[\s_\-*]+", " ", text.lower())
    best: tuple[int, int] | None = None  # (position, level)
    for name, level in [*_ALIASES.items(), *_NAMES]:
        pos = low.find(name)
        # a shorter name found inside a longer one at the same spot must not win
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, level)
    if best is not None:
        return best[1]
    digit = re.search(r"(?<![\d.])([1-5])(?![\d.])", low)
    return int(digit.group(1)) if digit else None


def judge_examples(
    examples: Sequence[RawExample], backend: ChatBackend, min_level: int = 5, progress: bool = True
) -> tuple[list[RawExample], Counter]:
    """(kept examples, counts per level name) — the study's Table II. Each judged example gets
    `meta["judge_level"]`; examples without an output are passed through unjudged."""
    counts: Counter = Counter()
    kept = []
    for ex in tqdm(examples, desc="judging", unit="pair", disable=not progress):
        if ex.output is None:
            kept.append(ex)
            continue
        try:
            reply = backend.chat(
                [{"role": "user", "content": JUDGE_PROMPT.format(intent=ex.input, snippet=ex.output)}],
                max_tokens=8,
            )
        except LLMError as err:
            log.warning("judge failed on %s: %s", ex.uid, err)
            reply = ""
        level = parse_level(reply)
        counts[LEVELS[level - 1] if level else UNPARSED] += 1
        ex.meta["judge_level"] = level
        if level is not None and level >= min_level:
            kept.append(ex)
    return kept, counts
