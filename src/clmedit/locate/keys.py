"""Keys at the edit token: the input of a layer's down projection where the edit is read.

The study (after ROME) edits at the last token of the prompt's last word. Our prompts end in
`Code:` / `Description:`, so that token is the prompt's last token: position `len(prompt) - 1`.
Batches are right-padded, so a row's positions up to its own length see exactly the tokens
they would see alone (causal attention), and the key does not depend on the batch.

The study's code reads each edit over the prompt alone and behind a few short generated
contexts (`context_prefixes`, `with_contexts`): the target value is optimised over all of these
texts (locate.values) and the update's key is their key averaged (`context_mean`), so the weight
update is solved for the key of the very inputs the value was fitted on.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

import torch
from torch import nn

from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace, TraceDict
from clmedit.models.text import gather_rows, last_position, model_name, pad_batch, prompt_ids

Distance = Literal["euc", "cos"]


def key_distance(queries: torch.Tensor, keys: torch.Tensor, how: Distance = "euc") -> torch.Tensor:
    """Pairwise distances (Q, N) between keys (Q, d) and (N, d): L2 ("euc") or 1 - cosine ("cos").

    GRACE's codebook matches with it, and the runner records distances with it, so both agree.
    """
    queries, keys = queries.float(), keys.float()
    if how == "euc":
        return torch.cdist(queries, keys)
    if how == "cos":
        qn = torch.nn.functional.normalize(queries, dim=-1)
        kn = torch.nn.functional.normalize(keys, dim=-1)
        return 1.0 - qn @ kn.T
    raise ValueError(f"unknown distance {how!r}; use 'euc' or 'cos'")


def prompt_batch(tok, prompts: list[str], device: torch.device | str = "cpu") -> dict:
    """Right-padded prompt ids: input_ids, attention_mask (B, T) and `last` (B,) = index of each last token."""
    rows = [prompt_ids(tok, p) for p in prompts]
    if any(not r for r in rows):
        raise ValueError("an empty prompt has no edit token; every prompt needs at least one token")
    batch = pad_batch(tok, rows, device)
    batch["last"] = last_position(batch["attention_mask"])
    return batch


@torch.no_grad()
def compute_keys(
    model: nn.Module, tok, prompts: list[str], layers: list[int], batch_size: int = 16
) -> dict[int, torch.Tensor]:
    """k_l(x) = input of down_proj in layer l at the last token of prompt x, for each layer l.

    Returns {layer: (N, d_mlp) float32}. One forward per batch covers every layer and stops
    right after the highest one (nothing above it runs). The model is unchanged.
    """
    arch = arch_of(model)
    device = next(model.parameters()).device
    paths = {layer: arch.path("down_proj", layer) for layer in layers}
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(prompts), batch_size):
        batch = prompt_batch(tok, prompts[start : start + batch_size], device)
        with TraceDict(model, paths.values(), stop=True, retain_input=True, retain_output=False) as td:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        for layer, path in paths.items():
            out[layer].append(gather_rows(td[path].input, batch["last"]).float())
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


@torch.no_grad()
def keys_and_outputs(
    model: nn.Module, tok, prompts: list[str], layer: int, path: str, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_layer (N, d_mlp), output of module `path` (N, d)) at each prompt's last token, one pass per batch."""
    arch = arch_of(model)
    device = next(model.parameters()).device
    key_path = arch.path("down_proj", layer)
    # stop after the decoder block that holds the later of the two (a module's output is complete
    # only when the module returns, and `path` may contain down_proj, e.g. the MLP of the same layer)
    site_layer = int(path.removeprefix(arch.layers + ".").split(".")[0])
    last_block = f"{arch.layers}.{max(layer, site_layer)}"
    keys, outs = [], []
    for start in range(0, len(prompts), batch_size):
        batch = prompt_batch(tok, prompts[start : start + batch_size], device)
        with (
            TraceDict(model, [key_path, path], retain_input=True) as td,
            Trace(model, last_block, retain_output=False, stop=True),
        ):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        keys.append(gather_rows(td[key_path].input, batch["last"]).float())
        outs.append(gather_rows(td[path].output, batch["last"]).float())
    return torch.cat(keys), torch.cat(outs)


CONTEXT_SEEDS = ("The", "Therefore", "Because", "I", "You")  # the study's ROME context starts


@torch.no_grad()
def context_prefixes(
    model: nn.Module, tok, seeds: tuple[str, ...] = CONTEXT_SEEDS, length: int = 10
) -> list[str]:
    """ROME's context templates, made deterministic: each seed continued greedily to `length` tokens.

    The study's code samples (top-k 5) each seed to 10 tokens and writes `text + ". " + prompt`;
    greedy decoding gives the same kind of prefix and the same prefixes on every run. Returns
    the `text + ". "` strings (NFKD-normalised, blank lines folded, as the study's code does).
    """
    device = next(model.parameters()).device
    out = []
    for seed in seeds:
        ids = torch.tensor([prompt_ids(tok, seed)], device=device)
        while ids.shape[1] < length:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        text = unicodedata.normalize("NFKD", tok.decode(ids[0], skip_special_tokens=True)).replace(
            "\n\n", " "
        )
        out.append(text + ". ")
    return out


def cached_prefixes(cache: dict[str, list[str]], model: nn.Module, tok) -> list[str]:
    """context_prefixes(model, tok), generated once per model name and kept in `cache`."""
    name = model_name(model)
    if name not in cache:
        cache[name] = context_prefixes(model, tok)
    return cache[name]


def with_contexts(prompts: list[str], prefixes: list[str]) -> list[str]:
    """Each prompt alone, then behind each prefix: N * (1 + P) texts, a prompt's texts together."""
    return [pre + p for p in prompts for pre in ["", *prefixes]]


def context_mean(x: torch.Tensor, n_prefixes: int, grouped: bool = False) -> torch.Tensor:
    """Per prompt, the mean of rows (N * (1 + P), d) laid out as `with_contexts` does -> (N, d).

    Flat (ROME's `compute_u`): all 1 + P texts weigh alike. Grouped (MEMIT's and PMET's
    `compute_ks`): the prompt alone is one group and the P prefixed texts another, and the two
    group means are averaged, so the prompt alone weighs as much as all prefixed texts together.
    """
    x = x.view(-1, n_prefixes + 1, x.shape[-1])
    if not grouped or n_prefixes == 0:
        return x.mean(1)
    return (x[:, 0] + x[:, 1:].mean(1)) / 2


def averaged_keys(
    model: nn.Module, tok, prompts: list[str], layer: int, prefixes: list[str], grouped: bool = False
) -> torch.Tensor:
    """Per prompt, k_layer averaged (`context_mean`) over the prompt alone and behind each prefix: (N, d)."""
    keys = compute_keys(model, tok, with_contexts(prompts, prefixes), [layer])[layer]
    return context_mean(keys, len(prefixes), grouped)
