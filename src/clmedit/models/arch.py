"""Where each model family keeps its parts: one adapter per `config.model_type`.

Editors never hard-code module paths; they ask the adapter for "the down projection of
layer 5" and get a module back, whatever the family calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from clmedit.errors import InputError, UnsupportedModelError


@dataclass(frozen=True)
class ArchAdapter:
    """Stable names -> module paths for one family. Per-layer paths are relative to the layer."""

    layers: str  # the ModuleList of decoder blocks
    mlp: str  # the feed-forward block, relative to a layer
    down_proj: str  # the MLP output projection (d_mlp -> d_model), relative to a layer
    attn: str  # the attention block, relative to a layer
    attn_out: str  # the attention output projection, relative to a layer
    final_norm: str  # the norm before the unembedding
    embed: str  # token embedding
    lm_head: str  # unembedding
    conv1d: bool = False  # GPT-2's Conv1D stores weights as (in, out) instead of nn.Linear's (out, in)
    # A norm applied to the MLP's output before the residual add (Gemma 2/3, OLMo 2), relative to a
    # layer; None where down_proj's output is added to the residual stream as it is. Editors edit
    # down_proj's output (the value), which is exact either way; MEMIT's spread over layers reads
    # the resulting residual, so it stays an iterative approximation there as everywhere.
    post_mlp_norm: str | None = None

    # --- module access -------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def path(self, part: str, layer: int | None = None) -> str:
        """Full dotted path of `part` ('down_proj', 'mlp', 'attn', 'attn_out', 'final_norm', ...)."""
        rel = getattr(self, part)
        if layer is None:
            return rel
        return f"{self.layers}.{layer}.{rel}"

    def module(self, model: nn.Module, part: str, layer: int | None = None) -> nn.Module:
        return model.get_submodule(self.path(part, layer))

    def down_proj_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.module(model, "down_proj", layer)

    # --- weight orientation --------------------------------------------------------------------
    def weight_out_in(self, module: nn.Module) -> torch.Tensor:
        """The module's weight as an (out, in) view, whatever the storage convention."""
        return module.weight.T if self.conv1d else module.weight

    def mlp_dim(self, model: nn.Module, layer: int = 0) -> int:
        """Width of the down projection's input (the 'key' space of ROME/GRACE)."""
        return self.weight_out_in(self.down_proj_module(model, layer)).shape[1]


_LLAMA_LIKE = ArchAdapter(
    layers="model.layers",
    mlp="mlp",
    down_proj="mlp.down_proj",
    attn="self_attn",
    attn_out="self_attn.o_proj",
    final_norm="model.norm",
    embed="model.embed_tokens",
    lm_head="lm_head",
)

# Gemma 2/3 and OLMo 2: Llama's module names, plus a norm on the MLP output. Gemma also scales the
# embedding by sqrt(d) inside its embedding module and ties lm_head to it; neither changes a path.
_POST_NORMED = replace(_LLAMA_LIKE, post_mlp_norm="post_feedforward_layernorm")

ADAPTERS: dict[str, ArchAdapter] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,  # + q_norm/k_norm inside attention
    "stablelm": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,  # fused self_attn.qkv_proj and mlp.gate_up_proj; down_proj/o_proj as Llama's
    "gemma2": _POST_NORMED,
    "gemma3_text": _POST_NORMED,
    "olmo2": _POST_NORMED,  # norms after attention and MLP only (no input norm)
    "starcoder2": replace(_LLAMA_LIKE, down_proj="mlp.c_proj"),  # non-gated MLP: c_fc -> act -> c_proj
    "gpt2": ArchAdapter(
        layers="transformer.h",
        mlp="mlp",
        down_proj="mlp.c_proj",
        attn="attn",
        attn_out="attn.c_proj",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        lm_head="lm_head",
        conv1d=True,
    ),
    "gpt_neox": ArchAdapter(
        layers="gpt_neox.layers",
        mlp="mlp",
        down_proj="mlp.dense_4h_to_h",
        attn="attention",
        attn_out="attention.dense",
        final_norm="gpt_neox.final_layer_norm",
        embed="gpt_neox.embed_in",
        lm_head="lm_head",
    ),
}


def arch_of(model: nn.Module) -> ArchAdapter:
    """The adapter for a transformers causal LM; a clear error names what to add for a new family."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no ArchAdapter; add one to ADAPTERS in clmedit/models/arch.py "
            f"(layers=..., mlp=..., down_proj=..., attn=..., attn_out=..., final_norm=..., embed=..., "
            f"lm_head=...). Supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def check_layer(layer: int, num_layers: int, what: str = "layer") -> None:
    """Reject an index outside a `num_layers`-deep model (negative ones count from the top)."""
    if not -num_layers <= layer < num_layers:
        raise InputError(
            f"{what} {layer} is out of range for {num_layers} layers (valid: 0..{num_layers - 1}, or "
            f"-{num_layers}..-1 from the top); fix the preset or --hp, or set reference_layers to the "
            f"depth the indices were chosen for"
        )


def rescale_layer(layer: int, num_layers: int, reference_layers: int = 32) -> int:
    """Map a layer index chosen for a `reference_layers`-deep model to a `num_layers`-deep one.

    The study's settings are for 32-layer 7B models; a 30-layer model's "layer 21" is
    round(21 * 30 / 32) = 20. Negative indices count from the top and are kept relative.
    An index outside the reference depth is an error, never clamped.
    """
    check_layer(layer, reference_layers)
    if layer < 0:
        check_layer(layer, num_layers)
        return num_layers + layer
    # only rounding can reach num_layers (when the model is under half the reference depth)
    return min(num_layers - 1, round(layer * num_layers / reference_layers))


def rescale_layers(layers: list[int], num_layers: int, reference_layers: int = 32) -> list[int]:
    """A layer *set* rescaled by depth, keeping its shape (sorted, distinct indices).

    - A consecutive run that ends at the reference's last layer (MALMEN's "last 5") stays the
      last len(run) layers of the model.
    - Any other consecutive run (MEMIT/PMET's 4..8) keeps its length: it starts at the rescaled
      first layer, moved down if needed so that it fits.
    - Anything else is rescaled index by index.
    A run longer than the model covers the whole model. Rounding each index instead would
    collapse or gap a run (4..8 at depth 28 gave 4, 4, 5, 6, 7).
    """
    for layer in layers:
        check_layer(layer, reference_layers)
    absolute = sorted({layer % reference_layers for layer in layers})
    if num_layers == reference_layers:
        return absolute
    n = len(absolute)
    if n > 1 and absolute == list(range(absolute[0], absolute[0] + n)):
        n = min(n, num_layers)
        if absolute[-1] == reference_layers - 1:
            start = num_layers - n
        else:
            start = min(rescale_layer(absolute[0], num_layers, reference_layers), num_layers - n)
        return list(range(start, start + n))
    return sorted({rescale_layer(layer, num_layers, reference_layers) for layer in layers})
