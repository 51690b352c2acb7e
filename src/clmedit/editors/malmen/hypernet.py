"""MALMEN's hypernetwork and its least-squares aggregation of many edits (Tan et al., ICLR 2024).

For an edited linear layer W (d_out x d_in) and an edit sequence, every target token i gives a
key u_i (the layer's input, d_in) and a value gradient g_i = dL/d(out_i) (d_out). The
hypernetwork maps each pair to a *value shift* v_i, the change of that token's output that
the edit wants:

    [u~; g~] = net_l(normalise_l([u; g]))         2 residual low-rank blocks, shared by layers,
                                                  with per-layer scale and shift
    v_i = -eta_l * (u~_i . u_i) * g~_i            (the effect on u_i of the rank-one step u~ g~^T)

and one weight shift S serves all edits at once: the ridge regression of values on keys,

    S = argmin_S sum_i ||S u_i - v_i||^2 + lambda_l ||S||_F^2
    S^T = (U^T U + lambda I)^{-1} U^T V  =  U^T (U U^T + lambda I)^{-1} V   (normal equation)

with U (n, d_in), V (n, d_out); eta_l and lambda_l are learned per layer (log-parameterised).
Every step is differentiable, so meta-training backpropagates a post-edit loss into the net.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from clmedit.files import atomic_save_tensors, atomic_write_text

WEIGHTS, CONFIG = "hypernet.safetensors", "hypernet.json"


def ridge_solve(keys: torch.Tensor, values: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """S (d_out, d_in) minimising sum_i ||S u_i - v_i||^2 + lam ||S||_F^2; keys (n, d_in), values (n, d_out).

    Solves the smaller of the two equivalent normal equations (primal d_in x d_in, or dual n x n).
    """
    n, d_in = keys.shape
    if n < d_in:  # dual: S^T = U^T (U U^T + lam I_n)^{-1} V
        gram = keys @ keys.T + lam * torch.eye(n, dtype=keys.dtype, device=keys.device)
        return (keys.T @ torch.linalg.solve(gram, values)).T
    gram = keys.T @ keys + lam * torch.eye(d_in, dtype=keys.dtype, device=keys.device)
    return torch.linalg.solve(gram, keys.T @ values).T


def mean_std(count: int, total: torch.Tensor, total_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std (clamped >= 1e-6; all ones below two rows) from running sums of rows.

    Running sums let pairs stream past once (MALMEN's training) or accumulate over a lifetime of
    edits (UltraEdit's lifelong normalisation). Requires count >= 1.
    """
    mean = total / count
    if count < 2:
        return mean, torch.ones_like(mean)
    var = ((total_sq - count * mean * mean) / (count - 1)).clamp_min(0)
    return mean, var.sqrt().clamp_min(1e-6)


@dataclass(frozen=True)
class HypernetConfig:
    """The net's shape: what a saved net needs to be rebuilt (the editor's hparams choose it)."""

    d_key: int  # the edited layer's input width (d_mlp for down_proj)
    d_value: int  # its output width (d_model)
    n_layers: int  # how many layers share this net
    rank: int  # width of each block's bottleneck
    blocks: int = 2


class _Block(nn.Module):
    """h + B relu(A h), then a per-layer affine (1 + scale_l) * h + shift_l; starts as the identity."""

    def __init__(self, width: int, rank: int, n_layers: int):
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.zeros(n_layers, width))
        self.shift = nn.Parameter(torch.zeros(n_layers, width))

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        h = h + self.up(torch.relu(self.down(h)))
        return h * (1 + self.scale[layer]) + self.shift[layer]


class MalmenNet(nn.Module):
    """Maps (keys, value gradients) of one layer to value shifts; see the module docstring."""

    def __init__(self, config: HypernetConfig, init_lr: float = 1e-4, init_lambda: float = 1.0):
        """init_lr / init_lambda: eta_l and lambda_l at the start of meta-training (then learned)."""
        super().__init__()
        self.config = config
        width = config.d_key + config.d_value
        self.blocks = nn.ModuleList(_Block(width, config.rank, config.n_layers) for _ in range(config.blocks))
        self.log_lr = nn.Parameter(torch.full((config.n_layers,), float(torch.tensor(init_lr).log())))
        self.log_lambda = nn.Parameter(torch.full((config.n_layers,), float(torch.tensor(init_lambda).log())))
        # per-layer feature statistics of [u; g], fixed from training pairs (set_stats)
        self.register_buffer("mean", torch.zeros(config.n_layers, width))
        self.register_buffer("std", torch.ones(config.n_layers, width))

    @torch.no_grad()
    def set_stats(self, layer: int, keys: torch.Tensor, grads: torch.Tensor) -> None:
        x = torch.cat([keys, grads], -1).double()
        self.set_moments(layer, len(x), x.sum(0), (x * x).sum(0))

    @torch.no_grad()
    def set_moments(self, layer: int, count: int, total: torch.Tensor, total_sq: torch.Tensor) -> None:
        """Mean and (unbiased) std of [u; g] from running sums, so pairs can stream past once."""
        if count == 0:
            return  # no pairs: keep the identity normalisation
        mean, std = mean_std(count, total, total_sq)
        self.mean[layer] = mean.to(self.mean)
        self.std[layer] = std.to(self.std)

    def value_shifts(self, layer: int, keys: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """v (n, d_value) for keys (n, d_key), value gradients (n, d_value) of layer slot `layer`."""
        keys, grads = keys.float(), grads.float()
        h = (torch.cat([keys, grads], -1) - self.mean[layer]) / self.std[layer]
        for block in self.blocks:
            h = block(h, layer)
        pseudo_key, pseudo_grad = h.split([self.config.d_key, self.config.d_value], -1)
        coeff = (pseudo_key * keys).sum(-1, keepdim=True)  # (n, 1)
        return -self.log_lr[layer].exp() * coeff * pseudo_grad

    def weight_shift(self, layer: int, keys: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """S (d_value, d_key): the joint least-squares shift for all pairs of this layer."""
        values = self.value_shifts(layer, keys, grads)
        return ridge_solve(keys.float(), values, self.log_lambda[layer].exp())


def save_hypernet(net: MalmenNet, directory: str | Path, extra: dict | None = None) -> Path:
    """hypernet.safetensors + hypernet.json (its config and `extra`, e.g. the edited layers)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_save_tensors(directory / WEIGHTS, tensors)
    atomic_write_text(
        directory / CONFIG, json.dumps({"config": asdict(net.config), **(extra or {})}, indent=2)
    )
    return directory


def load_hypernet(directory: str | Path) -> tuple[MalmenNet, dict]:
    """(net in eval mode, the extra fields saved with it)."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{directory} holds no {WEIGHTS}; train one with `clmedit train --editor malmen`"
        )
    raw = json.loads((directory / CONFIG).read_text())
    shape = raw.pop("config")  # nets saved before init_lr/init_lambda left the shape carry them: drop
    net = MalmenNet(HypernetConfig(**{k: v for k, v in shape.items() if k not in ("init_lr", "init_lambda")}))
    net.load_state_dict(load_file(str(directory / WEIGHTS)))
    return net.eval(), raw
