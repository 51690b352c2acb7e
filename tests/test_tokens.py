"""Token sequences as the study's code builds them: no BOS, prompt + " " + target tokenized together,
the generation budget len(encode(target)), and token_type_ids never reaching a model."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from clmedit.editors.base import get_editor
from clmedit.eval.generate import generate
from clmedit.locate.keys import compute_keys
from clmedit.models.text import edit_batch, generation_budget, prompt_ids, sequence_ids, target_ids
from clmedit.models.tiny import tiny_model, tiny_tokenizer
from tests.conftest import make_case

CORPUS = """\
Intent: sort a list in reverse order
Code: sorted(xs, reverse=True)
Description: Add two numbers and return the result.
def add(a, b):
    return a + b
import os, sys, re, json
x = [y ** 2 for y in items if y > 0]
Convert a string to lower case and strip spaces. The quick brown fox jumps over the lazy dog.
""".splitlines()

PAIRS = [
    ("Intent: sort a list in reverse order\nCode:", "sorted(xs, reverse=True)"),
    ("Code: def add(a, b):\n    return a + b\nDescription:", "Add two numbers."),
    ("Intent: square each item\nCode:", "[y ** 2 for y in items]"),
]


@pytest.fixture(scope="module")
def sentencepiece_pair():
    pytest.importorskip("sentencepiece")
    return _sentencepiece()


def _sentencepiece():
    """(raw SentencePiece processor, the same model wrapped as a Llama tokenizer that adds BOS by default)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tok = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), add_bos_token=True, legacy=True)
    tok.pad_token = tok.eos_token
    assert tok("Code:")["input_ids"][0] == tok.bos_token_id  # its default does add a BOS
    return sp, tok


def _bpe_with_bos():
    """The tiny byte-level BPE tokenizer, made to add a BOS by default (as many HF tokenizers do)."""
    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer())
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)]
    )
    assert tok("Code:")["input_ids"][0] == bos
    return tok


def _reference(tok, prompt: str, target: str) -> tuple[list[int], int]:
    """The study's construction: add_bos_token=False, tok(prompt + " " + target), prompt masked by len(tok(prompt))."""
    ref = copy.deepcopy(tok)
    ref.add_bos_token = False
    if ref("x")["input_ids"][:1] == [
        tok.bos_token_id
    ]:  # a post-processor BOS: what add_bos_token=False removes
        return ref(f"{prompt} {target}", add_special_tokens=False)["input_ids"], len(
            ref(prompt, add_special_tokens=False)["input_ids"]
        )
    return ref(f"{prompt} {target}")["input_ids"], len(ref(prompt)["input_ids"])


def test_sentencepiece_sequences_match_the_reference_without_stray_space(sentencepiece_pair):
    sp, tok = sentencepiece_pair
    for prompt, target in PAIRS:
        ids, p = sequence_ids(tok, prompt, target)
        assert (ids, p) == _reference(tok, prompt, target)
        assert ids == sp.encode(f"{prompt} {target}")  # what SentencePiece itself segments
        assert tok.bos_token_id not in ids
        pieces = tok.convert_ids_to_tokens(target_ids(tok, prompt, target))
        assert pieces[0] != "▁" and "▁" not in pieces  # no lone word-boundary token before the target
        # the old construction (target tokenized alone after a space) does start with a lone "▁"
        assert sp.encode(" " + target, out_type=str)[0] == "▁"
        assert generation_budget(tok, target) == len(sp.encode(target))


def test_byte_level_sequences_match_the_reference():
    tok = _bpe_with_bos()
    for prompt, target in PAIRS:
        ids, p = sequence_ids(tok, prompt, target)
        assert (ids, p) == _reference(tok, prompt, target)
        assert ids[:p] == prompt_ids(tok, prompt) and tok.bos_token_id not in ids
        assert tok.decode(ids[p:]) == " " + target
    batch = edit_batch(tok, [p for p, _ in PAIRS], [t for _, t in PAIRS])
    for row, (prompt, target) in enumerate(PAIRS):
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == _reference(tok, prompt, target)[0]
        assert tok.bos_token_id not in batch["input_ids"][row, :n].tolist()


def test_generation_never_sees_a_bos():
    model, _ = tiny_model("llama")
    tok = _bpe_with_bos()
    prompt = PAIRS[0][0]
    ids = torch.tensor([prompt_ids(tok, prompt)])
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert generate(model, tok, [prompt], 3)[0] == tok.decode(want[0, ids.shape[1] :])


class _MergingTokenizer:
    """A tokenizer whose last prompt token merges with the target's first one (word-level table)."""

    table = {"Code: x": [1, 2, 3], "Code: x = 1": [1, 2, 4, 5]}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.table[text]}


def test_prompt_that_is_not_a_prefix_splits_at_the_common_prefix():
    ids, p = sequence_ids(_MergingTokenizer(), "Code: x", "= 1")
    assert ids == [1, 2, 4, 5] and p == 2  # "x" (3) became "x =" (4): it belongs to the target
    assert target_ids(_MergingTokenizer(), "Code: x", "= 1") == [4, 5]


def _typed_tokenizer():
    """A tokenizer that returns token_type_ids (as CodeQwen's does)."""
    tok = copy.deepcopy(tiny_tokenizer())
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    assert "token_type_ids" in tok("Code:")
    return tok


def test_token_type_ids_never_reach_the_model():
    model, plain = tiny_model("llama")
    tok = _typed_tokenizer()
    case = make_case(0)
    assert generate(model, tok, [case.prompt], 4) == generate(model, plain, [case.prompt], 4)
    keys = compute_keys(model, tok, [case.prompt], [1])[1]
    assert torch.equal(keys, compute_keys(model, plain, [case.prompt], [1])[1])
    for name in ("grace", "rome", "ft"):
        result = get_editor(name, preset="tiny").apply(model, tok, [case])
        generate(model, tok, [case.prompt, case.rephrase], 4)
        result.restore()
