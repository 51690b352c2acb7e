"""Batched generation with left padding: the only way evaluation runs a model.

Prompts are tokenized exactly as `models.text.prompt_ids` does (no special tokens), left-padded so every row's prompt
ends at the same column, and decoded from there: only new tokens, cut at the row's first eos,
special tokens skipped. Invariant (tested): batched greedy output == one-prompt-at-a-time greedy
output. Rows are sorted by length before batching so a batch pads as little as possible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from clmedit.models.text import model_inputs, pad_token_id

log = logging.getLogger(__name__)


@contextmanager
def _left_padding(tok):
    """Temporarily pad on the left (decoder-only generation needs the prompts flush right)."""
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        yield tok
    finally:
        tok.padding_side = old


def _eos_ids(model, tok) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _generation_config(
    model, tok, max_new_tokens: int, do_sample: bool, top_k: int | None
) -> GenerationConfig:
    """A fresh config, so a checkpoint's own sampling defaults (temperature, top_p) never leak in."""
    eos = sorted(_eos_ids(model, tok))
    pad = pad_token_id(tok, default=eos[0] if eos else None)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, num_beams=1)
    if eos:
        kwargs["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if do_sample:
        kwargs.update(top_k=top_k if top_k is not None else 0, top_p=1.0, temperature=1.0)
    return GenerationConfig(**kwargs)


def _decode_new(tok, rows: torch.Tensor, eos: set[int]) -> list[str]:
    """rows (B, T_new): cut each row at its first eos, then decode without special tokens."""
    texts = []
    for row in rows.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    return texts


def generate(
    model,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int,
    do_sample: bool = False,
    top_k: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
) -> list[str]:
    """The decoded continuation of each prompt (new tokens only, unstripped), in input order.

    Greedy unless `do_sample` (then top-k sampling at temperature 1; the same `seed` gives the
    same texts, and the global RNG state is left as it was). `batch_size=None` runs one batch;
    `desc` shows a progress bar over batches.
    """
    prompts = list(prompts)
    if not prompts:
        return []
    if max_new_tokens <= 0:
        return [""] * len(prompts)
    device = next(model.parameters()).device
    config = _generation_config(model, tok, max_new_tokens, do_sample, top_k)
    eos = _eos_ids(model, tok)
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: OOM shows early
    size = batch_size or len(prompts)
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    out: list[str] = [""] * len(prompts)
    with _rng(seed if do_sample else None, device), _left_padding(tok), torch.no_grad():
        for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in model_inputs(enc).items()}
            seqs = model.generate(**enc, generation_config=config)
            texts = _decode_new(tok, seqs[:, enc["input_ids"].shape[1] :], eos)
            for i, text in zip(idx, texts):
                out[i] = text
    return out


@contextmanager
def _rng(seed: int | None, device: torch.device):
    """Seed torch's RNG for the block and restore the previous state afterwards (None: no-op)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
