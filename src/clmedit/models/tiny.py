"""Tiny random models of every supported family, built from a config: tests never download.

The tokenizer is a small byte-level BPE trained in memory on a fixed snippet of code and
prose, so tiny models tokenize real prompts the way real ones do (spaces, newlines, bytes).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    StableLmConfig,
)

FAMILIES = ("llama", "mistral", "qwen2", "stablelm", "gpt2", "gpt_neox")

_CORPUS = """\
Intent: sort a list in reverse order
Code: sorted(xs, reverse=True)
Code: def add(a, b):
    return a + b
Description: Add two numbers and return the result.
import os, sys, re, json
for i in range(10): print(i)
x = [y ** 2 for y in items if y > 0]
Convert a string to lower case and strip spaces. The quick brown fox jumps over the lazy dog.
return os.path.join(root, name)
"""


@lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with <|endoftext|> as bos/eos/pad (no BOS is added, like SmolLM2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens(
        {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    )
    return tok


def tiny_config(family: str, vocab_size: int, layers: int = 4, special_id: int = 0) -> PretrainedConfig:
    """A 4-layer, 64-wide config of `family` (MLP width 128 where the family lets us set it)."""
    ids = dict(bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id)
    common = dict(
        vocab_size=vocab_size, num_hidden_layers=layers, num_attention_heads=4, hidden_size=64, **ids
    )
    if family == "llama":
        return LlamaConfig(
            **common, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=512
        )
    if family == "mistral":
        return MistralConfig(
            **common, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=512
        )
    if family == "qwen2":
        return Qwen2Config(
            **common, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=512
        )
    if family == "stablelm":
        return StableLmConfig(
            **common, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=512
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(**common, intermediate_size=128, max_position_embeddings=512)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_layer=layers, n_head=4, n_embd=64, n_inner=128, n_positions=512, **ids
        )
    raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")


def tiny_model(family: str = "llama", seed: int = 0, layers: int = 4):
    """(model, tokenizer): a randomly initialised `family` model in eval mode, float32, on CPU."""
    tok = tiny_tokenizer()
    config = tiny_config(family, vocab_size=len(tok), layers=layers, special_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.clmedit_name = f"tiny-{family}"
    return model, tok
