"""Raw-corpus readers. Each turns a source into `RawExample`s: (input, output) pairs plus provenance.

Readers never raise on a bad record: they skip it and count the reason in a `Counter`, so a build's
statistics say exactly what was dropped and why. A missing path or an unknown format is a
`SourceError` (one clear message; the CLI turns it into a non-zero exit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


class SourceError(ValueError):
    """A source that cannot be read at all: missing path, unknown format, nothing usable."""


@dataclass
class RawExample:
    """One (input, output) pair before splitting.

    `output` may be None for pool-only examples: inputs that can serve as specificity neighbours
    (whose expected output is the model's own) but cannot be edit targets.
    """

    uid: str  # stable id within the source, e.g. "conala:41067960:1" or "stdlib:os/path.py:isabs"
    input: str  # raw NL intent (cnle) or code (csne), unformatted
    output: str | None  # target: code snippet (cnle) or summary (csne)
    human_rephrase: str | None = None  # a human-written alternative of `input`, if the source has one
    split: str | None = None  # the source's own split ("train" / "valid" / "test"), if any
    meta: dict[str, Any] = field(default_factory=dict)


_SPACE = re.compile(r"\s+")
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`~?([^`<]+?)(?:\s*<[^>]*>)?`")  # :func:`x`, :py:meth:`~a.b`
_DOUBLE_TICK = re.compile(r"``([^`]+)``")
_FIELD_LINE = re.compile(r"^\s*(?::\w+[^:]*:|@\w+|>>>|\.\. \w+)")  # :param x:, @return, doctest, directives
_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Returns?|Raises|Yields?|Examples?|Notes?|Usage)\s*:?\s*$"
)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)|->")  # "f(a, b) -> c": a signature line, not a description
_SENTENCE_END = re.compile(r"(?<![A-Z]\.[a-z])(?<!\be\.g)(?<!\bi\.e)(?<!\betc)[.!?](?=\s|$)")
_NON_DESCRIPTIVE = re.compile(
    r"^\[?(todo|xxx|fixme|deprecated|internal|private|undocumented|helper|override|overrides|"
    r"see |same as|alias|docstring|dummy|for internal use|this method is|not implemented|"
    r"implements? |called |used by |hook |stub)",
    re.IGNORECASE,
)


def collapse(text: str) -> str:
    """Collapse runs of whitespace to one space and strip."""
    return _SPACE.sub(" ", text).strip()


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, cleaned of reST/epydoc markup.

    Stops at the first blank line, field list (`:param`, `@return`), doctest or section header
    (`Args:`), then at the first sentence end; role markup `:func:`x`` and ``x`` become `x`.
    """
    lines = []
    for line in docstring.strip().splitlines():
        if not line.strip() or _FIELD_LINE.match(line) or _SECTION.match(line):
            break
        lines.append(line.strip())
    text = collapse(" ".join(lines))
    text = _DOUBLE_TICK.sub(r"\1", _ROLE.sub(r"\1", text))
    match = _SENTENCE_END.search(text)
    if match:
        text = text[: match.end()]
    return text.strip()


def summary_problem(summary: str, min_words: int = 3, max_chars: int = 300) -> str | None:
    """Why a docstring summary is not a usable description, or None when it is fine."""
    if not summary:
        return "empty docstring summary"
    words = summary.split()
    if len(words) < min_words:
        return "docstring summary too short"
    if len(summary) > max_chars:
        return "docstring summary too long"
    if _NON_DESCRIPTIVE.match(summary):
        return "non-descriptive docstring summary"
    if _SIGNATURE.search(summary):
        return "signature instead of a summary"
    if sum(c.isascii() for c in summary) < 0.9 * len(summary):
        return "non-ascii docstring summary"
    if not any(c.isalpha() for c in words[0]):
        return "non-descriptive docstring summary"
    return None
