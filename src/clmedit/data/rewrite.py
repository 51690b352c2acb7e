"""Generalization inputs X' for the edit cases.

CNLE (an NL intent): an LLM paraphrase, kept only if it passes `paraphrase_problem` (not identical,
keeps every identifier and literal, embedding cosine >= threshold); else the source's human rewrite
(CoNaLa: the original question title); else a deterministic rule-based rewording. The kind used is
returned so the build records it in `meta["rephrase_kind"]`.
CSNE (code): identifier renaming, see `clmedit.data.rename`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from clmedit.data.llm import ChatBackend, LLMError
from clmedit.data.sources import collapse

log = logging.getLogger(__name__)

_SYNONYM_TABLE = """
return:produce returns:produces get:obtain gets:obtains fetch:retrieve convert:transform
converts:transforms create:make creates:makes remove:delete removes:deletes delete:remove find:locate
finds:locates check:verify checks:verifies test:check tests:checks determine:establish compute:calculate
computes:calculates calculate:compute print:output display:show show:display split:divide
join:concatenate concatenate:join sort:order sorted:ordered read:load reads:loads write:save
writes:saves replace:substitute replaces:substitutes count:tally append:add extract:isolate
generate:produce build:construct construct:build initialize:initialise start:begin stop:halt
whether:if specified:given given:specified element:item elements:items item:element items:elements
directory:folder folder:directory current:present object:instance objects:instances string:text
strings:texts dictionary:dict parse:analyse parses:analyses send:transmit sends:transmits
update:refresh updates:refreshes close:shut closes:shuts length:size size:length first:initial
last:final using:with add:insert
"""
# Single-pass word substitutions (no chaining): common task verbs and nouns of intents and docstrings.
SYNONYMS: dict[str, str] = dict(pair.split(":") for pair in _SYNONYM_TABLE.split())
_PROTECTED = re.compile(
    r"`[^`]*`|'[^']*'|\"[^\"]*\"|\b\d+(?:\.\d+)?\b|\b\w*[_.]\w*\b|\b\w+\(\)|\b[a-z]+[A-Z]\w*\b|\b[A-Z]{2,}\w*\b"
)
_WORD = re.compile(r"[A-Za-z]+")


def literals(text: str) -> list[str]:
    """Spans a rephrase must keep verbatim: backticked and quoted text, numbers, identifiers."""
    out = []
    for match in _PROTECTED.finditer(text):
        span = match.group(0).strip("`'\"")
        if span:
            out.append(span)
    return out


def reword(intent: str) -> str:
    """A deterministic rule-based rewording that keeps every literal and identifier.

    Words outside protected spans are swapped by `SYNONYMS` (case kept); if nothing changed,
    the intent becomes a question ("How to ...?"). The result always differs from the input.
    """
    pieces, last = [], 0
    for match in _PROTECTED.finditer(intent):
        pieces.append((intent[last : match.start()], True))
        pieces.append((match.group(0), False))
        last = match.end()
    pieces.append((intent[last:], True))

    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = SYNONYMS.get(word.lower())
        if new is None:
            return word
        return new[0].upper() + new[1:] if word[0].isupper() else new

    text = "".join(_WORD.sub(swap, p) if free else p for p, free in pieces)
    if normalized(text) == normalized(intent):
        body = intent.rstrip(" .?!")
        text = f"How to {body[0].lower() + body[1:] if body[:1].isupper() and not body[1:2].isupper() else body}?"
    return text


def normalized(text: str) -> str:
    """Lower-cased words only: two texts equal under it say the same thing in the same words."""
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


PARAPHRASE_PROMPT = (
    "Paraphrase this description of a programming task. Use different wording with the same meaning. "
    "Keep every identifier, quoted value and number exactly as written. Reply with the paraphrase only.\n"
    "Description: {text}"
)


def clean_reply(reply: str) -> str:
    """The first non-empty line of a model reply, without labels or surrounding quotes."""
    line = next((ln for ln in reply.strip().splitlines() if ln.strip()), "")
    line = re.sub(
        r"^(paraphrase|rephrased?|description|answer)\s*:\s*", "", line.strip(), flags=re.IGNORECASE
    )
    if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1]
    return collapse(line)


def paraphrase_problem(
    original: str, candidate: str, similarity: float | None, threshold: float
) -> str | None:
    """Why `candidate` is not an acceptable paraphrase of `original`, or None if it is."""
    if not candidate:
        return "empty paraphrase"
    if normalized(candidate) == normalized(original):
        return "paraphrase identical to input"
    if len(candidate) > 3 * len(original) + 40:
        return "paraphrase too long"
    missing = [lit for lit in literals(original) if lit not in candidate]
    if missing:
        return "paraphrase lost an identifier or literal"
    if similarity is not None and similarity < threshold:
        return "paraphrase similarity below threshold"
    return None


def llm_paraphrases(
    intents: Sequence[str],
    backend: ChatBackend,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    threshold: float = 0.75,
) -> list[tuple[str | None, str | None]]:
    """(paraphrase or None, rejection reason or None) per intent. `encode` gives unit-norm
    embeddings for the similarity check (skipped when None)."""
    replies = []
    for text in tqdm(intents, desc="paraphrasing", unit="intent", disable=len(intents) < 20):
        try:
            reply = backend.chat([{"role": "user", "content": PARAPHRASE_PROMPT.format(text=text)}])
        except LLMError as err:
            log.warning("paraphrase failed: %s", err)
            reply = ""
        replies.append(clean_reply(reply))
    sims: list[float | None] = [None] * len(intents)
    if encode is not None:
        valid = [i for i, r in enumerate(replies) if r]
        if valid:
            a = encode([intents[i] for i in valid])
            b = encode([replies[i] for i in valid])
            for j, i in enumerate(valid):
                sims[i] = float(a[j] @ b[j])
    out = []
    for text, reply, sim in zip(intents, replies, sims):
        problem = paraphrase_problem(text, reply, sim, threshold)
        out.append((None, problem) if problem else (reply, None))
    return out
