"""Tiny random models of every supported family, built from a config: tests never download.

The tokenizer is a small byte-level BPE trained in memory on a fixed snippet of code and
prose, so tiny models tokenize real prompts the way real ones do (spaces, newlines, bytes).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    StableLmConfig,
    Starcoder2Config,
)

FAMILIES = (
    "llama", "mistral", "qwen2", "stablelm", "gpt2", "gpt_neox",
    "starcoder2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2",
)  # fmt: skip

# Families that share the Llama-style config keys (grouped-query attention, an MLP width).
_GQA_CONFIGS = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "stablelm": StableLmConfig,
    "starcoder2": Starcoder2Config,  # non-gated MLP (c_fc -> gelu -> c_proj), LayerNorm with bias
    "qwen3": Qwen3Config,  # q/k norms in attention
    "gemma2": Gemma2Config,  # norms around attention and MLP outputs, sqrt(d)-scaled tied embedding
    "gemma3_text": Gemma3TextConfig,  # Gemma 2's layout + q/k norms, sliding-window layers
    "phi3": Phi3Config,  # fused qkv_proj and gate_up_proj
    "olmo2": Olmo2Config,  # norms after attention and MLP only
}

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
    if family in _GQA_CONFIGS:
        extra = {"head_dim": 16} if family in ("qwen3", "gemma2", "gemma3_text") else {}  # 64 / 4 heads
        if family.startswith("gemma"):  # attention scaled by 1/sqrt(head_dim), as the real models are
            extra["query_pre_attn_scalar"] = 16
        return _GQA_CONFIGS[family](
            **common, **extra, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=512
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
    _raise_post_mlp_gain(model)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.clmedit_name = f"tiny-{family}"
    return model, tok


POST_MLP_GAIN = 8.0


@torch.no_grad()
def _raise_post_mlp_gain(model) -> None:
    """Give a norm on the MLP output (Gemma 2/3, OLMo 2) a gain of up to POST_MLP_GAIN instead of 1.

    There the MLP output is normalised before the residual add, so at gain 1 an edit of one
    down_proj adds a vector no longer than any other layer's and cannot steer a random model's
    output; trained models learn these gains. Gemma also normalises the MLP *input*, so every
    layer's output has the same norm: its last layer (where FT-L, GRACE and MALMEN edit on a
    4-layer model) gets twice the gain, so it can outweigh the layers below it. Gemma's norm
    computes x * (1 + w), OLMo's x * w.
    """
    from clmedit.models.arch import arch_of

    arch = arch_of(model)
    if arch.post_mlp_norm is None:
        return
    depth = arch.num_layers(model)
    for layer in range(depth):
        norm = arch.module(model, "post_mlp_norm", layer)
        gemma = "Gemma" in type(norm).__name__
        gain = POST_MLP_GAIN * (2.0 if gemma and layer == depth - 1 else 1.0)
        norm.weight.fill_(gain - 1.0 if gemma else gain)
