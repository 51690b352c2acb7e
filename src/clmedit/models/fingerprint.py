"""A short hash of everything that decides a model's outputs: weights, tokenizer, config, dtype.

Caches of things a model computes (neighbour answers, covariance statistics) and artifacts made
for a base model are keyed by it, so a model replaced at the same path or name never reuses
another model's results. Cheap by design: the weights enter as every tensor's name, shape, dtype
and a strided sample of `SAMPLE` values (cost grows with the number of tensors, not their size;
a full-weight hash would read every byte). The tokenizer enters whole (its serialized vocabulary,
merges and normalizer, or its SentencePiece model), with its special tokens and BOS/EOS settings.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

SAMPLE = 4096  # values hashed per tensor (evenly strided over its flattened elements)
VERSION = 1  # bump when the recipe changes, so every keyed cache is rebuilt
_CONFIG_SKIP = {"clmedit_name", "_name_or_path", "name_or_path", "transformers_version", "_commit_hash"}


def _tensor_sample(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    part = flat[::step][:SAMPLE].to("cpu").contiguous()
    return part.view(torch.uint8).numpy().tobytes() if part.numel() else b""


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer: name, shape, dtype and a strided sample of its values."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(_tensor_sample(t))
    return h.hexdigest()


def tokenizer_fingerprint(tok: Any) -> str:
    """Hash of a tokenizer: its full serialization (fast) or SentencePiece model and vocabulary (slow),
    its special tokens and the settings that change the ids it returns (not padding: generation sets it)."""
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        # The serialization starts with version, truncation, padding (set in passing by calls; they
        # do not change ids), then added_tokens, normalizer, ..., model: hash from added_tokens on.
        spec = backend.to_str()
        h.update(spec[max(0, spec.find('"added_tokens"')) :].encode())
    else:
        sp = getattr(tok, "sp_model", None)
        if sp is not None and hasattr(sp, "serialized_model_proto"):
            h.update(sp.serialized_model_proto())
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    settings = {
        "special": {k: str(v) for k, v in sorted(getattr(tok, "special_tokens_map", {}).items())},
        "added": sorted(str(t) for t in getattr(tok, "get_added_vocab", dict)()),
        **{a: str(getattr(tok, a, None)) for a in ("add_bos_token", "add_eos_token")},
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _config_dict(model: nn.Module) -> dict[str, Any]:
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    return {k: v for k, v in cfg.items() if k not in _CONFIG_SKIP}


def model_fingerprint(model: nn.Module, tok: Any = None, **settings: Any) -> str:
    """16 hex digits naming (weights, tokenizer, config, generation ids, `settings`).

    Compute it on the unedited model. `settings` are any further options that change outputs
    (e.g. a generation budget); they must be JSON-serializable.
    """
    gen = getattr(model, "generation_config", None)
    parts = {
        "version": VERSION,
        "weights": weights_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tok) if tok is not None else None,
        "config": _config_dict(model),
        "generation": {a: getattr(gen, a, None) for a in ("eos_token_id", "pad_token_id", "bos_token_id")},
        "settings": settings,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint(model: nn.Module) -> dict[str, str]:
    """A checksum per parameter/buffer plus the type of every module.

    Each tensor's raw bytes are hashed (sha1, without copying on the CPU), so a restore that is not
    bitwise exact always changes it. Cost: one read of the weights (~0.3 s for 135M float32 params).
    """
    fp: dict[str, str] = {}
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            fp[name] = hashlib.sha1(memoryview(raw)).hexdigest()
    for name, module in model.named_modules():
        fp[f"module:{name}"] = type(module).__qualname__
    return fp


def fingerprint_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names whose checksum or module type changed (or that appeared / disappeared)."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
