"""WISE's irrelevant inputs: a small fixed locality set, written for clmedit, never a case's probe.

WISE trains its side memory so that irrelevant inputs stay below the routing margin. The paper
takes them from a pre-collected set that is not the evaluation's locality data (EasyEdit samples
them from a training split); an edit here receives only its request (case id, task, prompt,
target), so the set is this fixed one: generic inputs of each task's template, not mined from any
source the dataset builds use. Which of them an edit trains against is a seeded draw.
"""

from __future__ import annotations

import random

from clmedit.data.schema import Task, format_prompt

INPUTS: dict[str, tuple[str, ...]] = {
    "cnle": (
        "print the numbers from one to ten",
        "return the larger of two integers",
        "count the vowels in a word",
        "open a log file and append a line with the current time",
        "build a dictionary that maps each letter to its position in the alphabet",
        "check whether a year is a leap year",
        "convert degrees Celsius to Fahrenheit",
        "remove duplicate entries from a list while keeping their order",
        "split a sentence into words and reverse their order",
        "compute the average of a list of floats",
        "read a CSV file and keep the rows whose third column is empty",
        "send a GET request and print the status code",
        "sleep for half a second between retries",
        "find the longest line in a text file",
        "format a price with two decimals and a euro sign",
        "generate a random password of twelve characters",
    ),
    "csne": (
        "def add(a, b):\n    return a + b",
        "def is_even(n):\n    return n % 2 == 0",
        "def greet(name):\n    print('Hello, ' + name)",
        "def first_or_none(items):\n    return items[0] if items else None",
        "def clamp(x, low, high):\n    return max(low, min(x, high))",
        "def word_count(text):\n    return len(text.split())",
        "def squares(n):\n    return [i * i for i in range(n)]",
        "def swap_pair(pair):\n    a, b = pair\n    return b, a",
        "def total_price(items):\n    return sum(item.price * item.quantity for item in items)",
        "def read_lines(path):\n    with open(path) as f:\n        return f.read().splitlines()",
        "def invert(mapping):\n    return {v: k for k, v in mapping.items()}",
        "def celsius(f):\n    return (f - 32) * 5 / 9",
        "def last_word(s):\n    parts = s.split()\n    return parts[-1] if parts else ''",
        "def repeat(s, times):\n    return s * times",
        "def percent(part, whole):\n    return 100.0 * part / whole",
        "def flatten(rows):\n    return [x for row in rows for x in row]",
    ),
}


def irrelevant_prompts(task: Task, prompt: str, n: int, seed: int) -> list[str]:
    """`n` formatted inputs of `task` from the locality set (a seeded draw), none equal to `prompt`."""
    pool = [p for p in (format_prompt(task, t) for t in INPUTS[task]) if p != prompt]
    return random.Random(seed).sample(pool, min(n, len(pool)))
