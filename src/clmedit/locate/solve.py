"""The closed-form weight updates of ROME and MEMIT, and MEMIT's spread of a target over layers.

All solves run in float64; the update is cast to the weight's dtype only when it is added.
Weights are always handled as (out, in) through ArchAdapter.weight_out_in (GPT-2's Conv1D too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from clmedit.locate.keys import context_mean, keys_and_outputs, with_contexts
from clmedit.models.arch import arch_of

Split = Literal["linear", "sqrt"]  # how the remaining residual is shared by the layers left


def rank_one_update(
    key: torch.Tensor,
    resid: torch.Tensor,
    cov: torch.Tensor | None = None,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """ROME: dW = r (C^-1 k)^T / (k^T C^-1 k),  key k (d_in,), resid r = v* - W k (d_out,) -> (d_out, d_in).

    It solves  min ||dW K0||_F^2  s.t. (W + dW) k = v*,  with K0 K0^T = C: the new weight maps
    k to v* exactly and, among all such weights, moves the outputs of the keys summarised by C
    the least. C = None means C = I (the study's ROME: no covariance adjustment), the
    minimum-Frobenius-norm update. `direction` k_bar (the study's key averaged over context
    prefixes) replaces k in the direction only: dW = r (C^-1 k_bar)^T / (k^T C^-1 k_bar), which
    still maps k to v* exactly.
    """
    k, r = key.double(), resid.double()
    d = k if direction is None else direction.double()
    u = d if cov is None else torch.linalg.solve(cov.double(), d)
    return torch.outer(r, u) / (k @ u)


def least_squares_update(
    keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor | None = None, weight: float = 15000.0
) -> torch.Tensor:
    """MEMIT: dW = R^T K (lambda C + K^T K)^-1,  keys K (N, d_in), resids R (N, d_out) -> (d_out, d_in).

    It solves  min_dW  ||K dW^T - R||_F^2 + lambda ||dW C^{1/2}||_F^2 : the new keys' outputs move
    by their residuals as far as possible while the outputs of the keys summarised by
    C = E[k k^T] (weighted by lambda, MEMIT's mom2_update_weight) move as little as possible.
    """
    k, r = keys.double(), resid.double()
    c = torch.eye(k.shape[1], dtype=k.dtype, device=k.device) if cov is None else cov.double()
    a = weight * c + k.T @ k  # (d_in, d_in), symmetric positive definite
    return torch.linalg.solve(a, k.T @ r).T


def null_space_projector(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's P = U0 U0^T (d_in, d_in), U0 = the eigenvectors of C = E[k k^T] with eigenvalue < threshold.

    Any update of the form dW = M P leaves the outputs of the keys C is made of (its directions
    above the threshold) unchanged: dW k0 = M P k0 ~ 0.
    """
    evals, evecs = torch.linalg.eigh(cov.double())
    kept = evecs[:, evals < threshold]
    return kept @ kept.T


def projected_update(
    keys: torch.Tensor, resid: torch.Tensor, projector: torch.Tensor, prior: torch.Tensor | None = None,
    l2: float = 10.0,
) -> torch.Tensor:  # fmt: skip
    """AlphaEdit: dW = X^T with X = (P (K^T K + K_p^T K_p) + l2 I)^-1 P K^T R  -> (d_out, d_in).

    keys K (N, d_in), resids R (N, d_out), projector P (d_in, d_in), prior K_p^T K_p (d_in, d_in)
    summing the keys of earlier edits still in the model. For a projector P and symmetric M,
    P (M P + l2 I)^-1 = (P M + l2 I)^-1 P, so dW = R^T K (P M + l2 I)^-1 P ends in P: the update
    lies in the null space of the preserved keys, and the prior keeps the new solve from undoing
    the earlier edits (Fang et al., 2025, eq. 14).
    """
    k, r, p = keys.double(), resid.double(), projector.double()
    gram = k.T @ k if prior is None else k.T @ k + prior.double()
    eye = torch.eye(k.shape[1], dtype=k.dtype, device=k.device)
    return torch.linalg.solve(p @ gram + l2 * eye, p @ k.T @ r).T


@torch.no_grad()
def add_to_down_proj(model: nn.Module, layer: int, delta: torch.Tensor) -> None:
    """W_out_in(down_proj of `layer`) += delta (d_out, d_in), in place."""
    arch = arch_of(model)
    weight = arch.weight_out_in(arch.down_proj_module(model, layer))
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


def spread_over_layers(
    model: nn.Module, tok, prompts: list[str], layers: list[int], site: str, target: torch.Tensor,
    covs: dict[int, torch.Tensor | None], weight: float, split: Split = "linear",
    update: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    prefixes: list[str] = (),
) -> list[float]:  # fmt: skip
    """MEMIT's update of down_proj in `layers` (ascending) so module `site` outputs `target` (N, d).

    For layer l_i (i = 0..L-1): keys K_i at the edit token under the current weights, averaged
    over the prompt alone and behind each of `prefixes` (grouped, as MEMIT's `compute_ks`: the
    texts the target value was optimised on), R_i = (target - out_site) / (L - i) with out_site
    read at the prompt alone (the remaining residual shared by the layers left; split="sqrt":
    / sqrt(L - i), PMET's), dW_i = least_squares_update(K_i, R_i, C_i, weight),
    applied before the next layer's keys are read. `update(layer, K_i, R_i) -> dW_i` replaces
    MEMIT's solve (AlphaEdit projects it).
    Returns the mean residual norm ||target - out_site|| seen at each layer.
    The caller backs the weights up; they are modified in place.
    """
    norms, texts, reps = [], with_contexts(prompts, list(prefixes)), len(prefixes) + 1
    for i, layer in enumerate(layers):
        keys, out = keys_and_outputs(model, tok, texts, layer, site)  # (N * reps, d_in), (N * reps, d_out)
        # the site's output at the prompt alone: the residual is the study's z* - h at the prompt
        keys, out = context_mean(keys, len(prefixes), grouped=True), out[::reps]
        resid = target.to(out.device) - out
        norms.append(float(resid.norm(dim=-1).mean()))
        share = resid / (len(layers) - i if split == "linear" else math.sqrt(len(layers) - i))
        if update is None:
            delta = least_squares_update(keys, share, covs.get(layer), weight)
        else:
            delta = update(layer, keys, share)
        add_to_down_proj(model, layer, delta)
    return norms
