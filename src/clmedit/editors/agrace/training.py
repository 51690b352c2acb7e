"""Training A-GRACE's key encoder so a rephrase lands near its original, a neighbour far.

Trained with the contrastive loss of Hadsell et al. (2006) on pairs (a, b, y):

    L = y * d^2 + (1 - y) * max(0, margin - d)^2,    d = ||E(a) - E(b)||_2

with positives (prompt, rephrase) y = 1 and negatives (prompt, neighbour) y = 0, one per neighbour
(all five, as the study's code). The margin
(1.3 for CNLE, 2.5 for CSNE in the study) sits above GRACE's insertion radius 1.0, so a
trained encoder puts rephrases inside a codebook entry's ball and neighbours outside it.
Early stopping watches the loss on a validation split of the *training* cases.

The loss is not scale-free, so the initial output scale is calibrated: W2 is scaled so that the
median training (prompt, rephrase) distance starts at `fraction * margin`. Without it a fresh
MLP puts every pair several margins apart, and 100 epochs at lr 1e-4 on a few hundred cases
never bring rephrases inside the radius (measured on smollm2-135m: median 1.7 vs 1.0). The
fraction trades generalization for specificity, so it is *selected*: encoders are trained per
candidate fraction on several seeded validation splits of the training cases, and the fraction
with the best mean key-level score wins: (share of rephrases inside GRACE's radius) + (share of
cases whose neighbours all stay outside it, as specificity EM counts). One small split alone
picks a noisy winner. The test half is never looked at.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from clmedit.editors.agrace.encoder import EncoderConfig, KeyEncoder, contrastive_loss

log = logging.getLogger(__name__)


class EncoderTraining(BaseModel):
    """How the encoder is trained; A-GRACE's hparams inherit these fields (one config, one place)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enc_batch_size: int = Field(64, ge=1, description="(prompt, rephrase|neighbour) pairs per encoder step")
    enc_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the encoder")
    enc_weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay of the encoder")
    enc_epochs: int = Field(100, ge=1, description="maximum encoder epochs")
    enc_patience: int = Field(10, ge=1, description="early stopping patience (epochs)")
    enc_val_fraction: float = Field(0.25, gt=0, lt=1, description="training cases held out for selection")
    enc_selection_seeds: int = Field(3, ge=1, description="validation splits each initial scale is scored on")
    enc_init_pos_fractions: list[float] = Field(
        [0.25, 0.5, 0.75, 1.0],
        description="candidate initial median (prompt, rephrase) distances as fractions of the margin; "
        "the best on the validation split is kept ([] = no calibration)",
    )


Negatives = tuple[torch.Tensor, torch.Tensor]  # features (M, d_in), owning case index (M,)
Positives = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x (K, d_in), x' (K, d_in), owning case (K,)


@dataclass(frozen=True)
class _Pairs:
    """Pairs (left[a], right[b], y) and the training case each belongs to (a split selects by it).

    left = anchors (N) then extra positives' first halves; right = positives (N), negatives (M),
    then the extra positives' second halves.
    """

    a: torch.Tensor
    b: torch.Tensor
    y: torch.Tensor
    case: torch.Tensor
    extra: torch.Tensor  # bool: an extra positive pair

    @classmethod
    def of(cls, n: int, owner: torch.Tensor, extra_owner: torch.Tensor | None = None) -> _Pairs:
        """Each case's (prompt, rephrase) positive, one (prompt, neighbour) negative per neighbour,
        and one positive per extra pair (owned by case `extra_owner[i]`)."""
        m = len(owner)
        extra = torch.empty(0, dtype=torch.long) if extra_owner is None else extra_owner
        k = len(extra)
        return cls(
            torch.cat([torch.arange(n), owner, n + torch.arange(k)]),
            torch.cat([torch.arange(n), n + torch.arange(m), n + m + torch.arange(k)]),
            torch.cat([torch.ones(n), torch.zeros(m), torch.ones(k)]),
            torch.cat([torch.arange(n), owner, extra]),
            torch.arange(n + m + k) >= n + m,
        )

    def select(self, cases: torch.Tensor, extra: bool = True) -> _Pairs:
        """The pairs of `cases`; `extra=False` leaves out the extra positives."""
        keep = torch.isin(self.case, cases)
        if not extra:
            keep &= ~self.extra
        return _Pairs(self.a[keep], self.b[keep], self.y[keep], self.case[keep], self.extra[keep])


def _negatives(negative: torch.Tensor | Negatives) -> Negatives:
    """A (N, d) tensor means one negative per case; a (features, owner) pair any number per case."""
    if isinstance(negative, torch.Tensor):
        return negative, torch.arange(len(negative))
    return negative


@torch.no_grad()
def pair_loss(
    encoder: KeyEncoder, anchor, positive, negative: torch.Tensor | Negatives, margin: float
) -> float:
    """Contrastive loss over every (prompt, rephrase) and (prompt, neighbour) pair."""
    feats, owner = _negatives(negative)
    pairs, bank = _Pairs.of(len(anchor), owner), torch.cat([positive, feats])
    return float(contrastive_loss(encoder(anchor[pairs.a]), encoder(bank[pairs.b]), pairs.y, margin))


@torch.no_grad()
def key_balanced_accuracy(
    encoder: KeyEncoder,
    anchor: torch.Tensor,
    positive: torch.Tensor,
    neighbours: torch.Tensor,
    owner: torch.Tensor,
    radius: float,
) -> tuple[float, float, float]:
    """(share of positives within `radius` of their anchor, share of neighbours outside it,
    share of cases whose every neighbour is outside it: the key-level specificity EM).

    neighbours (M, d_in) belong to anchors owner (M,): a case may have several.
    """
    za = encoder(anchor)
    inside = (za - encoder(positive)).norm(dim=-1) <= radius
    outside = (za[owner] - encoder(neighbours)).norm(dim=-1) > radius
    hit = torch.zeros(len(anchor), dtype=torch.long).index_add(0, owner, (~outside).long())
    has = torch.zeros(len(anchor), dtype=torch.long).index_add(0, owner, torch.ones_like(owner))
    kept = float((hit[has > 0] == 0).float().mean()) if bool((has > 0).any()) else 1.0
    return float(inside.float().mean()), float(outside.float().mean()), kept


def _train_one(
    encoder, anchor, bank, train: _Pairs, val: _Pairs, settings: EncoderTraining, margin, gen
) -> dict:
    """Train in place with early stopping on the validation loss; keeps the best weights."""
    opt = torch.optim.AdamW(encoder.parameters(), lr=settings.enc_lr, weight_decay=settings.enc_weight_decay)

    @torch.no_grad()
    def val_loss() -> float:
        encoder.eval()
        return float(contrastive_loss(encoder(anchor[val.a]), encoder(bank[val.b]), val.y, margin))

    history = {"train": [], "val": [val_loss()], "best_epoch": 0}
    best, best_state, flat = history["val"][0], copy.deepcopy(encoder.state_dict()), 0
    for epoch in range(1, settings.enc_epochs + 1):
        encoder.train()
        order = torch.randperm(len(train.y), generator=gen)
        total = 0.0
        for start in range(0, len(order), settings.enc_batch_size):
            idx = order[start : start + settings.enc_batch_size]
            y = train.y[idx]
            loss = contrastive_loss(encoder(anchor[train.a[idx]]), encoder(bank[train.b[idx]]), y, margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
        history["train"].append(total / len(order))
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


def holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, training) case indices: a seeded shuffle of range(n), `fraction` held out (>= 1)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(fraction * n)))
    return perm[:n_val], perm[n_val:]


def train_candidate(
    anchor, positive, negatives: Negatives, fraction, seed: int, settings, margin, radius, config,
    extra: Positives | None = None,
):  # fmt: skip
    """Train one encoder for an initial scale on the split of `seed` (`holdout`).

    `extra`: more positive pairs (x (K, d_in), x' (K, d_in), owning case (K,)); a pair trains only
    when its case is in the training split, and never counts in the validation loss.
    Returns (encoder, history, scores at `radius` on the validation cases, with their indices "val").
    """
    feats, owner = negatives
    val, train = holdout(len(anchor), settings.enc_val_fraction, seed)
    pairs = _Pairs.of(len(anchor), owner, None if extra is None else extra[2])
    bank = torch.cat([positive, feats] + ([] if extra is None else [extra[1]]))
    left = anchor if extra is None else torch.cat([anchor, extra[0]])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = KeyEncoder(config)
    train_neg = feats[torch.isin(owner, train)]
    encoder.set_stats(torch.cat([anchor[train], positive[train], train_neg]))
    if fraction is not None:
        encoder.calibrate(anchor[train], positive[train], fraction * margin)
    history = _train_one(
        encoder, left, bank, pairs.select(train), pairs.select(val, extra=False), settings, margin, gen
    )
    in_val = torch.isin(owner, val)
    position = torch.full((len(anchor),), -1, dtype=torch.long)
    position[val] = torch.arange(len(val))
    inside, outside, kept = key_balanced_accuracy(
        encoder, anchor[val], positive[val], feats[in_val], position[owner[in_val]], radius
    )
    return encoder, history, {"inside": inside, "outside": outside, "kept": kept, "val_loss": min(history["val"]),
                              "epochs": len(history["train"]), "val": val}  # fmt: skip


def train_encoder(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | Negatives,
    settings: EncoderTraining = EncoderTraining(),
    *,
    margin: float = 1.3,
    radius: float = 1.0,
    seed: int = 0,
    config: EncoderConfig | None = None,
) -> tuple[KeyEncoder, dict]:
    """Train a KeyEncoder on features (N, d_in) of prompts, their rephrases and their neighbours.

    `negative`: (N, d_in), one neighbour per case, or (features (M, d_in), owning case (M,)):
    every neighbour of a case is a negative pair with its prompt (the study uses all five).
    `margin`: the contrastive margin (1.3 CNLE, 2.5 CSNE); `radius`: GRACE's insertion radius.
    Selection: for each initial scale in `enc_init_pos_fractions` and each of
    `enc_selection_seeds` seeds, an encoder is trained on a seeded split (`enc_val_fraction` held out,
    early stopping on its loss) and scored on its validation cases as the protocol scores an
    edit: rephrases inside the radius + cases whose every neighbour is outside it (specificity
    EM needs all five kept). The scale with the best mean score wins; the returned
    encoder is its run on the split of `seed`.
    Returns (encoder in eval mode, history: that run's losses, every candidate's scores per seed,
    their mean and spread (max - min) over seeds).
    """
    negatives = _negatives(negative)
    if len(anchor) != len(positive) or len(anchor) < 2 or len(negatives[0]) != len(negatives[1]):
        raise ValueError("train_encoder needs >= 2 cases, one positive per anchor and an owner per negative")
    config = config or EncoderConfig(d_in=anchor.size(1))
    seeds = [seed + k for k in range(max(1, settings.enc_selection_seeds))]
    candidates: list[dict] = []
    best: tuple[float, KeyEncoder, dict, float | None] | None = None
    for fraction in settings.enc_init_pos_fractions or (None,):
        runs = [
            train_candidate(anchor, positive, negatives, fraction, s, settings, margin, radius, config)
            for s in seeds
        ]
        scores = [r[2]["inside"] + r[2]["kept"] for r in runs]
        mean = sum(scores) / len(scores)
        candidates.append(
            {
                "init_pos_fraction": fraction,
                "val_inside": runs[0][2]["inside"],  # on the split of `seed` (the returned encoder)
                "val_outside": runs[0][2]["outside"],
                "val_kept": runs[0][2]["kept"],
                "val_loss": runs[0][2]["val_loss"],
                "epochs": runs[0][2]["epochs"],
                "scores": scores,  # inside + kept per seed
                "mean_score": mean,
                "spread": max(scores) - min(scores),
            }
        )
        log.info("encoder init %s: validation score %.3f (spread %.3f over %d seeds)",
                 fraction, mean, max(scores) - min(scores), len(seeds))  # fmt: skip
        if best is None or mean > best[0] + 1e-9:
            best = (mean, runs[0][0], runs[0][1], fraction)
    _, encoder, history, chosen = best
    history.update(candidates=candidates, init_pos_fraction=chosen)
    log.info("encoder: chose initial scale %s (%d seeds, %d cases)", chosen, len(seeds), len(anchor))
    return encoder, history
