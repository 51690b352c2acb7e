"""A-GRACE's key encoder: an MLP that maps a pooled prompt activation to a key.

    key = E(x) = W2 relu(W1 (x - mu) / sigma)          x: pooled down_proj input, (d_mlp,)
    W1: d_mlp -> d_mlp/4, W2: d_mlp/4 -> 256; mu: the training features' mean, sigma: their
    overall standard deviation (one scalar, so the raw geometry is kept; fixed buffers).

How it is trained (contrastive pairs, initial scale, selection on validation splits) is in
`training.py`; this module is the model, its loss and its files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from clmedit.files import atomic_save_tensors, atomic_write_text

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = "encoder.safetensors", "encoder.json"


@dataclass(frozen=True)
class EncoderConfig:
    d_in: int  # width of the pooled feature (the model's d_mlp)
    d_out: int = 256  # key width
    d_hidden: int = 0  # 0: d_in // 4, as in the study
    pool: str = "mean"  # how the feature was pooled over prompt tokens ("mean" | "last")
    layer: int = -1  # the model layer the features come from (informative; the editor decides)
    meta: dict = field(default_factory=dict)  # provenance: model name, margin, fold, ...

    @property
    def hidden(self) -> int:
        return self.d_hidden or max(1, self.d_in // 4)


class KeyEncoder(nn.Module):
    """d_in -> d_in/4 -> d_out MLP with ReLU, on standardised inputs. (B, d_in) -> (B, d_out)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mu", torch.zeros(config.d_in))
        self.register_buffer("sigma", torch.ones(config.d_in))
        self.net = nn.Sequential(
            nn.Linear(config.d_in, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.d_out)
        )

    def set_stats(self, feats: torch.Tensor) -> None:
        """Fix the centring (per feature) and the scale (one scalar) from training features (N, d_in)."""
        self.mu.copy_(feats.mean(0))
        self.sigma.fill_(float(feats.std().clamp_min(1e-6)) if feats.numel() > 1 else 1.0)

    @torch.no_grad()
    def calibrate(self, a: torch.Tensor, b: torch.Tensor, distance: float) -> None:
        """Scale the output layer so the median ||E(a_i) - E(b_i)|| equals `distance`."""
        now = float((self(a) - self(b)).norm(dim=-1).median())
        if now > 0:
            self.net[2].weight.mul_(distance / now)
            self.net[2].bias.mul_(distance / now)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mu.dtype) - self.mu) / self.sigma
        return self.net(x)


def contrastive_loss(za: torch.Tensor, zb: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over pairs of y d^2 + (1-y) max(0, margin - d)^2; za, zb (B, k), y (B,) in {0, 1}."""
    d = (za - zb).pow(2).sum(-1).add(1e-12).sqrt()
    y = y.to(d.dtype)
    return (y * d.pow(2) + (1 - y) * (margin - d).clamp_min(0).pow(2)).mean()


def encoder_state(encoder: KeyEncoder) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights on the CPU, config as JSON): the encoder as data, e.g. inside a fix file."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in encoder.state_dict().items()}
    return tensors, asdict(encoder.config)


def encoder_from_state(tensors: dict[str, torch.Tensor], config: dict) -> KeyEncoder:
    """The encoder `encoder_state` described (bitwise the same keys); ValueError when it does not fit."""
    try:
        encoder = KeyEncoder(EncoderConfig(**config))
        encoder.load_state_dict(tensors)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"the encoder's weights or config do not fit ({err})") from None
    return encoder.eval().requires_grad_(False)  # a loaded encoder is frozen; fit trains a new one


def save_encoder(encoder: KeyEncoder, directory: str | Path) -> Path:
    """Write encoder.safetensors + encoder.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, config = encoder_state(encoder)
    atomic_save_tensors(directory / WEIGHTS, tensors)
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2))
    return directory


def load_encoder(directory: str | Path) -> KeyEncoder:
    """Read what `save_encoder` wrote; the loaded encoder gives bitwise the same keys."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{directory} holds no {WEIGHTS}; train one with `clmedit train --editor agrace`"
        )
    return encoder_from_state(
        load_file(str(directory / WEIGHTS)), json.loads((directory / CONFIG).read_text())
    )
