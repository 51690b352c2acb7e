"""A-GRACE's key encoder: an MLP trained so a rephrase lands near its original, a neighbour far.

    key = E(x) = W2 relu(W1 (x - mu) / sigma)          x: pooled down_proj input, (d_mlp,)
    W1: d_mlp -> d_mlp/4, W2: d_mlp/4 -> 256; mu: the training features' mean, sigma: their
    overall standard deviation (one scalar, so the raw geometry is kept; fixed buffers).

Trained with the contrastive loss of Hadsell et al. (2006) on pairs (a, b, y):

    L = y * d^2 + (1 - y) * max(0, margin - d)^2,    d = ||E(a) - E(b)||_2

with positives (prompt, rephrase) y = 1 and negatives (prompt, neighbour) y = 0. The margin
(1.3 for CNLE, 2.5 for CSNE in the study) sits above GRACE's insertion radius 1.0, so a
trained encoder puts rephrases inside a codebook entry's ball and neighbours outside it.
Early stopping watches the loss on a validation split of the *training* cases.

The loss is not scale-free, so the initial output scale is calibrated: W2 is scaled so that the
median training (prompt, rephrase) distance starts at `fraction * margin`. Without it a fresh
MLP puts every pair several margins apart, and 100 epochs at lr 1e-4 on a few hundred cases
never bring rephrases inside the radius. The fraction trades generalization for specificity, so it is *selected*: one encoder is trained per
candidate fraction, and the one with the best key-level balanced accuracy on the validation
split wins, i.e. (share of rephrases inside GRACE's radius) + (share of neighbours outside it).
The test half is never looked at.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

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


class EncoderTraining(BaseModel):
    """How the encoder is trained; A-GRACE's hparams inherit these fields (one config, one place)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enc_batch_size: int = Field(64, ge=1, description="training cases per encoder step")
    enc_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the encoder")
    enc_weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay of the encoder")
    enc_epochs: int = Field(100, ge=1, description="maximum encoder epochs")
    enc_patience: int = Field(10, ge=1, description="early stopping patience (epochs)")
    enc_val_fraction: float = Field(0.1, gt=0, lt=1, description="training cases held out for selection")
    enc_init_pos_fractions: list[float] = Field(
        [0.25, 0.5, 0.75, 1.0],
        description="candidate initial median (prompt, rephrase) distances as fractions of the margin; "
        "the best on the validation split is kept ([] = no calibration)",
    )


def _pairs(anchor, positive, negative, idx):
    a = torch.cat([anchor[idx], anchor[idx]])
    b = torch.cat([positive[idx], negative[idx]])
    y = torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))])
    return a, b, y


@torch.no_grad()
def pair_loss(encoder: KeyEncoder, anchor, positive, negative, margin: float) -> float:
    a, b, y = _pairs(anchor, positive, negative, torch.arange(len(anchor)))
    return float(contrastive_loss(encoder(a), encoder(b), y, margin))


@torch.no_grad()
def key_balanced_accuracy(
    encoder: KeyEncoder,
    anchor: torch.Tensor,
    positive: torch.Tensor,
    neighbours: torch.Tensor,
    owner: torch.Tensor,
    radius: float,
) -> tuple[float, float]:
    """(share of positives within `radius` of their anchor, share of neighbours outside it).

    neighbours (M, d_in) belong to anchors owner (M,): a case may have several.
    """
    za = encoder(anchor)
    inside = (za - encoder(positive)).norm(dim=-1) <= radius
    outside = (za[owner] - encoder(neighbours)).norm(dim=-1) > radius
    return float(inside.float().mean()), float(outside.float().mean())


def _train_one(encoder, anchor, positive, negative, train, val, settings, margin, gen) -> dict:
    """Train in place with early stopping on the validation loss; keeps the best weights."""
    opt = torch.optim.AdamW(encoder.parameters(), lr=settings.enc_lr, weight_decay=settings.enc_weight_decay)

    def val_loss() -> float:
        encoder.eval()
        return pair_loss(encoder, anchor[val], positive[val], negative[val], margin)

    history = {"train": [], "val": [val_loss()], "best_epoch": 0}
    best, best_state, flat = history["val"][0], copy.deepcopy(encoder.state_dict()), 0
    for epoch in range(1, settings.enc_epochs + 1):
        encoder.train()
        order = train[torch.randperm(len(train), generator=gen)]
        total = 0.0
        for start in range(0, len(order), settings.enc_batch_size):
            a, b, y = _pairs(anchor, positive, negative, order[start : start + settings.enc_batch_size])
            loss = contrastive_loss(encoder(a), encoder(b), y, margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
        history["train"].append(total / (2 * len(order)))
        history["val"].append(val_loss())
        if history["val"][-1] < best - 1e-6:
            best, best_state, flat = history["val"][-1], copy.deepcopy(encoder.state_dict()), 0
            history["best_epoch"] = epoch
        else:
            flat += 1
            if flat >= settings.enc_patience:
                break
    encoder.load_state_dict(best_state)
    encoder.eval()
    return history


def train_encoder(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    settings: EncoderTraining = EncoderTraining(),
    *,
    margin: float = 1.3,
    radius: float = 1.0,
    seed: int = 0,
    config: EncoderConfig | None = None,
    neighbours: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[KeyEncoder, dict]:
    """Train a KeyEncoder on features (N, d_in) of prompts, their rephrases and a neighbour each.

    `margin`: the contrastive margin (1.3 CNLE, 2.5 CSNE); `radius`: GRACE's insertion radius,
    what "inside" means for the selection score. The first `enc_val_fraction` of a seeded
    permutation is the validation split. For each initial scale in `enc_init_pos_fractions`
    an encoder is trained (early stopping on the validation loss); the one with the best
    validation balanced accuracy is returned.
    `neighbours` = (features (M, d_in), owning case index (M,)) scores specificity on every
    neighbour of the validation cases; default: the one in `negative`.
    Returns (encoder in eval mode, history: the winner's per-epoch losses, every candidate's scores).
    """
    if not (len(anchor) == len(positive) == len(negative)) or len(anchor) < 2:
        raise ValueError("train_encoder needs >= 2 cases and equal numbers of anchors/positives/negatives")
    config = config or EncoderConfig(d_in=anchor.size(1))
    perm = torch.randperm(len(anchor), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(settings.enc_val_fraction * len(anchor))))
    val, train = perm[:n_val], perm[n_val:]
    nb_feats, nb_owner = neighbours if neighbours is not None else (negative, torch.arange(len(anchor)))
    in_val = torch.isin(nb_owner, val)
    position = torch.full((len(anchor),), -1, dtype=torch.long)
    position[val] = torch.arange(len(val))
    candidates: list[dict] = []
    best: tuple[float, KeyEncoder, dict, float | None] | None = None
    for fraction in settings.enc_init_pos_fractions or (None,):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        encoder = KeyEncoder(config)
        encoder.set_stats(torch.cat([anchor[train], positive[train], negative[train]]))
        if fraction is not None:
            encoder.calibrate(anchor[train], positive[train], fraction * margin)
        history = _train_one(encoder, anchor, positive, negative, train, val, settings, margin, gen)
        inside, outside = key_balanced_accuracy(
            encoder, anchor[val], positive[val], nb_feats[in_val], position[nb_owner[in_val]], radius
        )
        score = inside + outside
        candidates.append(
            {
                "init_pos_fraction": fraction,
                "val_inside": inside,
                "val_outside": outside,
                "val_loss": min(history["val"]),
                "epochs": len(history["train"]),
            }
        )
        log.info(
            "encoder init %s: val rephrases inside %.2f, neighbours outside %.2f", fraction, inside, outside
        )
        if best is None or score > best[0] + 1e-9:
            best = (score, encoder, history, fraction)
    _, encoder, history, chosen = best
    history.update(candidates=candidates, init_pos_fraction=chosen)
    log.info("encoder: chose initial scale %s on %d validation cases", chosen, n_val)
    return encoder, history


def save_encoder(encoder: KeyEncoder, directory: str | Path) -> Path:
    """Write encoder.safetensors + encoder.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(asdict(encoder.config), indent=2))
    return directory


def load_encoder(directory: str | Path) -> KeyEncoder:
    """Read what `save_encoder` wrote; the loaded encoder gives bitwise the same keys."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{directory} holds no {WEIGHTS}; train one with `clmedit train --editor agrace`"
        )
    config = EncoderConfig(**json.loads((directory / CONFIG).read_text()))
    encoder = KeyEncoder(config)
    encoder.load_state_dict(load_file(str(directory / WEIGHTS)))
    return encoder.eval()
