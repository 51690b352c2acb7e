"""The fast evaluation path: `generate`'s tokens from a decode loop of our own.

Invariant (tested on every tiny family and editor): `CaseDecoder(model, tok)(prompts, ...)` returns
exactly what `generate.generate(model, tok, prompts, ...)` returns. It holds because every model
call is the reference's call, bit for bit: the same rows in the same order and left padding, the
same inputs (input_ids, the 2-D attention mask or none, position ids, logits_to_keep, a DynamicCache),
the logits processors
and token choice `model.generate` builds (transformers' own builders), and for sampling one
torch.multinomial over the batch's probabilities per step under the same seeded RNG, so the random
stream is the reference's. Other batch shapes are not used: they change float results bitwise
(a row's matmul depends on how many rows it shares the call with) and can flip near-tie tokens.

What it saves: `model.generate`'s per-call and per-step bookkeeping, and one prefill per case: the
greedy [prompt, rephrase] batch and the fluency batch are the same batch, so its prefill is computed
once and continued twice. That reuse is exact only for a stateless model; an editor's hooks or
wrapper modules (GRACE, WISE, ...) may keep per-generation state, so with any of them each call
runs its own prefill, in the reference's order.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, LogitsProcessorList

from clmedit.eval.generate import _decode_new, _eos_ids, _generation_config, _left_padding, _rng, generate
from clmedit.models.text import model_inputs


@dataclass
class Prefilled:
    """A left-padded batch after its prompt: what a continuation starts from."""

    order: list[int]  # batch row i is prompts[order[i]]
    ids: torch.Tensor  # (B, T) prompt ids
    mask: torch.Tensor | None  # (B, T) attention mask; None without padding (as model.generate drops it)
    positions: torch.Tensor | None  # (B, 1) the last prompt position of each row; None: the model takes none
    logits: torch.Tensor  # (B, V) float32 logits at the last prompt position
    cache: Any  # the model's DynamicCache after the prompt
    extra: dict[str, Any]  # further keyword arguments of every call (logits_to_keep)


def stateless(model: nn.Module) -> bool:
    """True when no module is an editor's: only torch/transformers classes and no forward hooks.

    Then a forward's result depends on its inputs and the weights alone, so one prefill may be
    continued more than once (the hooks of GRACE-style editors count decoded steps per prefill).
    """
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        if type(m).__module__.split(".")[0] not in ("torch", "transformers"):
            return False
    return True


def prefill(model: nn.Module, tok, prompts: Sequence[str]) -> Prefilled:
    """Tokenize `prompts` as `generate` does (one batch, longest first, left-padded) and run the prompt.

    The call's arguments are those `model.generate` passes: position ids from the mask, the mask
    dropped when no row is padded, logits at the last position only where the model allows.
    """
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    with _left_padding(tok):
        enc = tok([prompts[i] for i in order], return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(device) for k, v in model_inputs(enc).items()}
    ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
    takes = inspect.signature(model.forward).parameters
    if "position_ids" in takes:
        enc["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    if bool((mask == 1).all()):
        mask = None
    extra = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, return_dict=True, **enc, **extra
        )
    logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
    positions = enc["position_ids"][:, -1:] if "position_ids" in enc else None
    return Prefilled(order, ids, mask, positions, logits, cache, extra)


def _processors(model: nn.Module, config, start: Prefilled) -> LogitsProcessorList:
    """The logits processors `model.generate(generation_config=config)` applies, built by transformers.

    Its private builders are used on purpose: the checkpoint's own generation_config fills unset
    fields (a repetition penalty, say), and only transformers knows every processor that implies.
    """
    merged, _ = model._prepare_generation_config(config)
    model._prepare_special_tokens(merged, True, device=start.ids.device, batch_size=start.ids.shape[0])
    merged.max_length = start.ids.shape[1] + config.max_new_tokens
    return model._get_logits_processor(
        generation_config=merged, input_ids_seq_length=start.ids.shape[1], encoder_input_ids=start.ids,
        logits_processor=LogitsProcessorList(), device=start.ids.device, model_kwargs={},
    )  # fmt: skip


def ours(model: nn.Module, config) -> bool:
    """False when the checkpoint's generation_config asks `model.generate` for what this loop does not do
    (another cache, chunked prefill, stop strings, a time limit), or when this transformers release lacks
    the private builders the loop borrows: then the reference runs instead."""
    builders = ("_prepare_special_tokens", "_get_logits_processor", "_supports_logits_to_keep")
    try:  # transformers' private builders: another release may lack them or change their signatures
        merged, _ = model._prepare_generation_config(config)
    except (AttributeError, TypeError):
        return False
    if not all(hasattr(model, name) for name in builders):
        return False
    unusual = (merged.cache_implementation, merged.prefill_chunk_size, merged.stop_strings, merged.max_time)
    return all(v is None for v in unusual) and merged.num_beams == 1 and not merged.return_dict_in_generate


def decode(model: nn.Module, start: Prefilled, config, eos: set[int]) -> torch.Tensor:
    """(B, n) new tokens from `start`, as `model.generate`'s sampling loop picks them (n <= max_new_tokens).

    Rows that reached an eos get the pad token from then on; the loop stops when every row has.
    `start.cache` is advanced in place.
    """
    ids, mask, positions, logits, cache = start.ids, start.mask, start.positions, start.logits, start.cache
    processors = _processors(model, config, start)
    eos_t = torch.tensor(sorted(eos), device=ids.device)
    pad = config.pad_token_id
    unfinished = torch.ones(ids.shape[0], dtype=torch.long, device=ids.device)
    new = []
    with torch.no_grad():
        for step in range(config.max_new_tokens):
            scores = processors(ids, logits)
            if config.do_sample:
                nxt = torch.multinomial(nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = torch.argmax(scores, dim=-1)
            if eos:
                nxt = nxt * unfinished + pad * (1 - unfinished)
                unfinished = unfinished & ~torch.isin(nxt, eos_t)
            ids = torch.cat([ids, nxt[:, None]], dim=-1)
            new.append(nxt)
            if step == config.max_new_tokens - 1 or not unfinished.any():
                break
            step_kw = dict(start.extra)
            if positions is not None:
                positions = step_kw["position_ids"] = positions + 1
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, cache=cache, use_cache=True, return_dict=True,
                        **step_kw)  # fmt: skip
            logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
            del out  # as generate does: the step's outputs are freed before the next step allocates
    return torch.stack(new, dim=1)


class CaseDecoder:
    """`generate(model, tok, ...)` for one case's calls; the `reuse` prompt list's prefill serves twice.

    The first call on exactly `reuse` keeps a copy of its prefill (stateless models only), the
    second starts from it. Make one per case and model state: a kept prefill is valid only while
    the weights are those it was computed with.
    """

    def __init__(self, model: nn.Module, tok, reuse: Sequence[str] = ()):
        self.model, self.tok = model, tok
        self._reuse = tuple(reuse) if stateless(model) else ()
        self._kept: Prefilled | None = None

    def __call__(
        self, prompts: Sequence[str], max_new_tokens: int, do_sample: bool = False,
        top_k: int | None = None, seed: int | None = None,
    ) -> list[str]:  # fmt: skip
        """The decoded continuation of each prompt (new tokens only, unstripped), in input order."""
        prompts = list(prompts)
        if not prompts:
            return []
        if max_new_tokens <= 0:
            return [""] * len(prompts)
        config = _generation_config(self.model, self.tok, max_new_tokens, do_sample, top_k)
        if not ours(self.model, config):
            return generate(self.model, self.tok, prompts, max_new_tokens, do_sample, top_k, seed)
        eos = _eos_ids(self.model, self.tok)
        start = self._start(prompts)
        device = start.ids.device
        with _rng(seed if do_sample else None, device):
            rows = decode(self.model, start, config, eos)
        out = [""] * len(prompts)
        for i, text in zip(start.order, _decode_new(self.tok, rows, eos)):
            out[i] = text
        return out

    def _start(self, prompts: list[str]) -> Prefilled:
        if not self._reuse or tuple(prompts) != self._reuse:
            return prefill(self.model, self.tok, prompts)
        if self._kept is not None:
            start, self._kept, self._reuse = self._kept, None, ()
            return start
        start = prefill(self.model, self.tok, prompts)
        self._kept = copy.deepcopy(start)  # decode advances start.cache in place
        return start
