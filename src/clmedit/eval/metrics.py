"""The study's four metrics. Every score here is in [0, 1] (entropy in bits); reports multiply by 100.

- exact_match: 1 iff prediction == reference (both already stripped by the caller).
- bleu: corpus BLEU-4 (sacrebleu): BP * exp(sum_n 1/4 log p_n), no smoothing, "13a" tokenization,
  so any n-gram order without a match gives 0.
- rouge_l: F-measure of the longest common subsequence of rouge-score tokens (no stemming).
- ngram_entropy: sum_n w_n H_n / len(ns), ns = (2, 3), w = (2/3, 4/3), H_n = -sum f log2 f over
  the relative frequencies f of the word n-grams (nltk-style word tokens; no download needed).

An empty prediction scores 0 on every metric.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache


def exact_match(pred: str, ref: str) -> float:
    return float(bool(pred) and pred == ref)


@lru_cache(maxsize=1)
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(smooth_method="none", tokenize="13a", max_ngram_order=4, effective_order=False)


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 of `preds` against one reference each, in [0, 1]."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds or not any(preds):
        return 0.0
    score = _bleu_metric().corpus_score(list(preds), [list(refs)]).score / 100.0
    return min(1.0, max(0.0, score))  # exp(log ...) can overshoot 1 by an ulp


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure: LCS length l over m reference and n predicted tokens, F = 2PR/(P+R),
    P = l/n, R = l/m (rouge-score's tokenizer: lower-cased alphanumeric runs)."""
    if not pred:
        return 0.0
    return _rouge_scorer().score(ref, pred)["rougeL"].fmeasure


# --- nltk-style word tokens ------------------------------------------------------------------------
# nltk.word_tokenize = sentence split (punkt) + the improved Treebank rules. We mimic both with a
# few ordered regex rewrites; the result matches nltk on ordinary prose and code-like text.
_SENTENCE_END = re.compile(r"(?<=\w)([.])(?=[\])}>\"']*\s+[\"'(\[]*[A-Z0-9`])")
_ABBREVIATION = re.compile(r"(?:^|\s)(?:\w\.)+\w?$|(?:^|\s)(?:Mr|Mrs|Ms|Dr|Prof|St|vs|etc|e\.g|i\.e)$")
_REWRITES: list[tuple[re.Pattern, str]] = [
    # opening quotes become ``, closing double quotes ''
    (re.compile(r'^"'), " `` "),
    (re.compile(r"([«“‘„]|`+)"), r" \1 "),
    (re.compile(r'(?<=[\s(\[{<])"'), " `` "),
    (re.compile(r"(?<=[\s(\[{<])''"), " `` "),
    # punctuation that always stands alone
    (re.compile(r"[;@#$%&?!*]"), r" \g<0> "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[\]\[(){}<>]"), r" \g<0> "),
    (re.compile(r"--"), " -- "),
    (re.compile("[\u2012-\u2015]"), r" \g<0> "),  # figure, en and em dashes
    # , and : split unless followed by a digit (1,000 and 10:30 stay whole)
    (re.compile(r"([:,])(?=\D|$)"), r" \1 "),
    # the final period of the text (before closing brackets or quotes)
    (re.compile(r"(?<!\.)\.(?=[\])}>\"'\s]*$)"), " . "),
    # closing quotes
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    # contractions and possessives: don't -> do n't, it's -> it 's, dogs' -> dogs '
    (re.compile(r"(?i)(?<=\w)(n't)(?=\s|$)"), r" \1"),
    (re.compile(r"(?i)(?<=[^'\s])('s|'m|'d|'ll|'re|'ve)(?=\s|$)"), r" \1"),
    (re.compile(r"(?<=[^'\s])'(?=\s|$)"), " '"),
    # a leading apostrophe before a word that is not a contraction: 'hello -> ' hello
    (re.compile(r"(?i)(?<![\w'])'(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), "' "),
]
_SPECIAL_WORDS = re.compile(r"(?i)\b(can)(not)\b|\b(gon)(na)\b|\b(gim)(me)\b|\b(wan)(na)\b|\b(got)(ta)\b")


def _split_sentence_ends(text: str) -> str:
    """Detach a period that ends a sentence inside the text (what punkt does before tokenizing)."""

    def repl(m: re.Match) -> str:
        if _ABBREVIATION.search(text[: m.start()]):
            return m.group(1)
        return " " + m.group(1) + " "

    return _SENTENCE_END.sub(repl, text)


def word_tokenize(text: str) -> list[str]:
    """nltk.word_tokenize without its punkt download: a regex re-implementation of its rules."""
    text = _split_sentence_ends(text)
    for pattern, repl in _REWRITES:
        text = pattern.sub(repl, text)
    text = _SPECIAL_WORDS.sub(lambda m: " ".join(g for g in m.groups() if g), text)
    return text.split()


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """sum_n w_n H_n / len(ns) with H_n the entropy (bits) of the n-gram frequency distribution."""
    if not text:
        return 0.0
    tokens = word_tokenize(text)
    total = 0.0
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        size = sum(counts.values())
        h = -sum(c / size * math.log2(c / size) for c in counts.values()) if size else 0.0
        total += w * h
    return total / len(ns)
