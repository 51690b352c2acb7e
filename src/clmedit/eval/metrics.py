"""The study's four metrics. Every score here is in [0, 1] (entropy in bits); reports multiply by 100.

- exact_match: 1 iff prediction == reference (both already stripped by the caller).
- bleu: corpus BLEU-4 (sacrebleu): BP * exp(sum_n 1/4 log p_n), no smoothing, "13a" tokenization,
  so any n-gram order without a match gives 0.
- rouge_l: F-measure of the longest common subsequence of rouge-score tokens (no stemming).
- ngram_entropy: sum_n w_n H_n / len(ns), ns = (2, 3), w = (2/3, 4/3), H_n = -sum f log2 f over
  the relative frequencies f of the word n-grams of nltk's word tokens (as the reference).

An empty prediction scores 0 on every metric.
"""

from __future__ import annotations

import math
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


# --- word tokens as nltk.word_tokenize makes them ---------------------------------------------------
# The reference's n-gram entropy tokenizes with nltk.word_tokenize: punkt sentence splitting, then
# nltk's improved Treebank tokenizer on each sentence. The Treebank step is nltk's own class here
# (it needs no data). The punkt step needs the trained English model, a download that is not
# available offline, so we run nltk's Punkt algorithm with untrained parameters plus the common
# abbreviations: it splits at the same sentence ends, and can differ from the trained model only on
# an abbreviation it does not know (a period then stands alone), which 64-token samples rarely hold.
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e"}


@lru_cache(maxsize=1)
def _nltk_tokenizers():
    from nltk.tokenize.destructive import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(_ABBREVIATIONS)
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """The tokens of `nltk.word_tokenize(text)` (see above), without its punkt download."""
    sentences, words = _nltk_tokenizers()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]


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
