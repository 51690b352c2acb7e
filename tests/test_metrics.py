"""The study's metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from clmedit.eval.metrics import bleu, exact_match, ngram_entropy, rouge_l, word_tokenize


def test_exact_match():
    assert exact_match("sorted(xs)", "sorted(xs)") == 1.0
    assert exact_match("sorted(xs) ", "sorted(xs)") == 0.0  # callers strip; the metric does not
    assert exact_match("", "") == 0.0  # an empty output scores 0


def test_bleu_by_hand():
    # 13a tokens: the cat sat on the mat / the cat sat on a mat; modified precisions
    # p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3; equal lengths so BP = 1.
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-9)


def test_bleu_brevity_penalty_and_corpus_counts():
    # Pair 1 is a 4-token prefix of a 6-token reference: every precision 1, BP = exp(1 - 6/4).
    assert bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(-0.5), abs=1e-9)
    # Corpus BLEU pools n-gram counts over the pairs (it is not the mean of sentence BLEUs):
    # pair 2 is exact (4 tokens: 4/4, 3/3, 2/2, 1/1), so p = (8/8, 6/6, 4/4, 2/2), BP = exp(1 - 10/8).
    pooled = bleu(["the cat sat on", "a b c d"], ["the cat sat on the mat", "a b c d"])
    assert pooled == pytest.approx(math.exp(1 - 10 / 8), abs=1e-9)


def test_bleu_without_smoothing_is_zero_when_an_order_has_no_match():
    assert bleu(["x = 1"], ["x = 1"]) == 0.0  # 3 tokens: no 4-gram at all
    assert bleu([""], ["return a + b"]) == 0.0
    assert bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bleu(["a"], [])


def test_rouge_l_by_hand():
    # LCS of (a b c d) and (a c b d e) has length 3: P = 3/4, R = 3/5, F = 2PR / (P + R) = 2/3.
    assert rouge_l("a b c d", "a c b d e") == pytest.approx(2 / 3)
    assert rouge_l("A B", "a b") == pytest.approx(1.0)  # rouge-score lower-cases
    assert rouge_l("", "a b") == 0.0


def test_ngram_entropy_by_hand():
    # tokens a b a b: bigrams {ab: 2, ba: 1} -> H2 = h(1/3); trigrams {aba, bab} -> H3 = 1 bit.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert ngram_entropy("a b a b") == pytest.approx(expected)
    assert ngram_entropy("") == 0.0
    assert ngram_entropy("word") == 0.0  # no bigram: both entropies are 0
    # a repetitive text is less fluent than a varied one of the same length
    assert ngram_entropy("the the the the the the") < ngram_entropy("one two three four five six")


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Hello, world!", ["Hello", ",", "world", "!"]),
        ("Don't split 1,000 or 10:30.", ["Do", "n't", "split", "1,000", "or", "10:30", "."]),
        ('He said "hi" (twice).', ["He", "said", "``", "hi", "''", "(", "twice", ")", "."]),
        ("It's the dogs' bone...", ["It", "'s", "the", "dogs", "'", "bone", "..."]),
        ("First sentence. Second one.", ["First", "sentence", ".", "Second", "one", "."]),
        ("Use e.g. this.", ["Use", "e.g.", "this", "."]),
        ("return a + b", ["return", "a", "+", "b"]),
        ("x[0] = {'k': 1}", ["x", "[", "0", "]", "=", "{", "'", "k", "'", ":", "1", "}"]),
    ],
)
def test_word_tokenize_by_hand(text, tokens):
    assert word_tokenize(text) == tokens


def test_word_tokenize_is_nltks_treebank_tokenizer_on_one_sentence():
    """Within one sentence (periods inside names and numbers included) the tokens are nltk's own."""
    from nltk.tokenize.destructive import NLTKWordTokenizer

    nltk_tok = NLTKWordTokenizer()
    texts = [
        "Don't stop: it's 10:30, and I can't wait... (really) \"quoted\" text.",
        "def add(a, b):\n    return a + b",
        "Return the sum of x and y; raise ValueError if x < 0.",
        "The dogs' bones -- and 'single quotes' too?",
        "x = [y ** 2 for y in items if y > 0] # comment @decorator $5 50%",
        "I'll we've they're she'd I'm gonna cannot",
        "os.path.join(root, name) returns 3.5 for Mr. Smith, e.g. here",
    ]
    for text in texts:
        assert word_tokenize(text) == nltk_tok.tokenize(text), text


def test_word_tokenize_splits_sentences_first_as_nltk_word_tokenize_does():
    """nltk.word_tokenize = punkt sentences, then the Treebank tokenizer on each: a period that ends
    a sentence inside the text stands alone (the Treebank step alone would keep `sum.`)."""
    from nltk.tokenize.destructive import NLTKWordTokenizer

    sentences = ["Return the sum.", "Raise ValueError if x < 0!", "Is it ok?", "Yes, see e.g. the docs."]
    expected = [t for s in sentences for t in NLTKWordTokenizer().tokenize(s)]
    assert word_tokenize(" ".join(sentences)) == expected
    assert expected[:4] == ["Return", "the", "sum", "."]
