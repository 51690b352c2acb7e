"""A-GRACE: GRACE with a key that generalises across rephrasings (the study's contribution).

GRACE's key, the down_proj input at the last prompt token, moves a lot when the prompt is
reworded, so a rephrase misses the codebook entry (generalization ~0). A-GRACE keys on

    key(x) = E( mean_{t in prompt} h_t )         h_t: down_proj input at layer L, token t

where E is a small MLP trained contrastively on a training split (encoder.py) to pull
(prompt, rephrase) together and push (prompt, neighbour) apart by a margin above GRACE's
radius. Everything else (codebook, value training, replacement) is GRACE's, unchanged.

Ablations (the study's Table VI):
    agrace-no-cl   key = mean_t h_t            (mean pooling, no encoder, nothing to train)
    agrace-last    key = E(h_last)             (the encoder over GRACE's own last-token key)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from clmedit.editors.agrace.encoder import (
    EncoderConfig,
    KeyEncoder,
    encoder_from_state,
    encoder_state,
    load_encoder,
    save_encoder,
)
from clmedit.editors.agrace.features import Pool, cached_prompt_features, pool_tokens
from clmedit.editors.agrace.training import EncoderTraining, train_encoder
from clmedit.editors.base import EditResult, EditState
from clmedit.editors.grace.editor import Grace
from clmedit.editors.grace.hparams import GraceHParams, Replacement
from clmedit.errors import IntegrityError, NotSavableError
from clmedit.models.text import model_name

log = logging.getLogger(__name__)


@dataclass
class TrainingFeatures:
    """What an encoder trains on: per case its prompt and rephrase, and its neighbours (any number)."""

    anchor: torch.Tensor  # (N, d_in) prompts
    positive: torch.Tensor  # (N, d_in) their rephrases
    neighbours: torch.Tensor  # (M, d_in) every neighbour ...
    owner: torch.Tensor  # (M,) ... and the case it belongs to
    config: EncoderConfig  # the encoder to train (width, layer, pooling; margin in meta)
    cases: list = field(default_factory=list)  # the N cases (rows of anchor), for more features


# A value that stops the moment the prompt decodes is often too weak for a rephrase that matches the
# entry: on 40 training-half CNLE cases (never scored) with every rephrase matched, 82.5 % of rephrases
# decoded the target at GRACE's early stop (4 steps on average) and 100 % after 8 steps (README).
CARRY_STEPS = Field(8, ge=0, description="steps a value always takes before stop_when_decoded may end it "
                    "(n_iter caps it): enough for the value to carry to a matched rephrase")  # fmt: skip


class AGraceHParams(GraceHParams, EncoderTraining):
    """GRACE's hparams, the encoder's training (EncoderTraining: enc_*), and these."""

    STUDY_KEYS = GraceHParams.STUDY_KEYS | {"encoder_state_path"}
    TRAINED_FROM: ClassVar[str | None] = "encoder_dir"
    study_replacement: ClassVar[Replacement] = "key"  # the study's A-GRACE leaves decoded tokens alone

    margin: float | None = Field(None, gt=0, description="contrastive margin; None: by task (below)")
    margin_cnle: float = Field(1.3, gt=0, description="margin for NL->code cases")
    margin_csne: float = Field(2.5, gt=0, description="margin for code->NL cases")
    key_dim: int = Field(256, ge=1, description="encoder output width")
    min_steps: int = CARRY_STEPS
    encoder_dir: str | None = Field(None, description="folder of a trained encoder to load")
    feature_cache: str | None = Field(None, description="feature cache folder; None: $CLMEDIT_CACHE/features")


class AGrace(Grace):
    """GRACE keyed by a contrastive encoder of the mean prompt activation."""

    name = "agrace"
    HParams = AGraceHParams
    trainable = True

    pool: ClassVar[Pool] = "mean"
    use_encoder: ClassVar[bool] = True
    # Cost hints (base.py's convention), measured under probe-disjoint folds with min_steps 8, one 1-thread
    # job among three on 2 cores (a third of its seconds): one fold's fit of A-GRACE or SCOPE took 263-324 s
    # on default CNLE (392 training cases); one apply 1.79 s (A-GRACE) and 1.38 s (SCOPE) on CNLE, 5.2 s
    # (SCOPE) on CSNE. CSNE's fit keeps the earlier figure: SCOPE's one measure (3,244 s) computed the
    # CSNE features, which a study's later fits read from the disk cache. A-GRACE's CSNE apply is SCOPE's.
    FIT_SECONDS: ClassVar[dict[str, float]] = {"cnle": 100.0, "csne": 215.0}  # 100 encoder epochs, by task
    APPLY_SECONDS = {"cnle": 0.6, "csne": 1.7}

    def fit_seconds(self, task: str) -> float:
        return self.FIT_SECONDS.get(task, self.FIT_SECONDS["csne"]) * self.hparams.enc_epochs / 100  # the epochs dominate

    def __init__(self, hparams: AGraceHParams | None = None):
        super().__init__(hparams)
        self.encoder: KeyEncoder | None = None
        if self.use_encoder and getattr(self.hparams, "encoder_dir", None):
            self.load(self.hparams.encoder_dir)

    # --- keys -----------------------------------------------------------------------------------
    def keys(self, inputs: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d_mlp) down_proj inputs, (B, T) prompt mask -> (B, d_key): E(pool over the prompt)."""
        how = self.encoder.config.pool if self.use_encoder and self.encoder is not None else self.pool
        pooled = pool_tokens(inputs.float(), prompt_mask, how)  # (B, d_mlp), or 2 d_mlp for mean+last
        if not self.use_encoder:
            return pooled
        if self.encoder is None:
            raise RuntimeError(
                f"{self.name} needs a trained key encoder: call fit(model, tok, train_cases), "
                f"load(dir), or set encoder_dir (train one with `clmedit train --editor {self.name}`)"
            )
        self.encoder.to(pooled.device)
        return self.encoder(pooled)

    # --- training -------------------------------------------------------------------------------
    def margin_for(self, cases: list) -> float:
        hp = self.hparams
        if hp.margin is not None:
            return hp.margin
        tasks = {c.task for c in cases}
        return hp.margin_csne if tasks == {"csne"} else hp.margin_cnle

    def pool_for(self, cases: list) -> Pool:
        """How the encoder trained on `cases` pools the prompt (A-GRACE: its class's `pool`)."""
        return self.pool

    def reads(self, pool: str) -> bool:
        """Whether this editor takes an encoder trained on `pool`-ed features."""
        return pool == self.pool

    def fit(self, model, tok, train_cases, unprobed: Sequence[str] = (), **kwargs: Any) -> dict[str, Any]:
        """Train the key encoder on (prompt, rephrase) positives and (prompt, neighbour) negatives (all).

        Features come from the unedited model at the edited layer (cached on disk); a validation
        split of `train_cases` picks the epoch and the initial scale, scoring specificity on all
        of its cases' neighbours. kwargs override hparams (e.g. enc_epochs=20). `unprobed` is not
        used: A-GRACE trains as the study's does.
        """
        self.hparams = self.hparams.override("fit arguments", **kwargs)
        if not self.use_encoder:
            return {}
        hp = self.hparams
        data = self.training_features(model, tok, train_cases)
        self.encoder, history = train_encoder(
            data.anchor,
            data.positive,
            (data.neighbours, data.owner),
            hp,
            margin=data.config.meta["margin"],
            radius=hp.eps,
            seed=hp.seed,
            config=data.config,
        )
        data.config.meta.update(
            init_pos_fraction=history["init_pos_fraction"], candidates=history["candidates"]
        )
        self.encoder.to(next(model.parameters()).device)
        return history

    def training_features(self, model, tok, train_cases: list) -> TrainingFeatures:
        """Pooled features of the training prompts, rephrases and every neighbour (cached on disk)."""
        hp = self.hparams
        usable = [c for c in train_cases if c.neighbours]
        if len(usable) < 2:
            raise ValueError(f"{self.name}: need >= 2 training cases with neighbours, got {len(usable)}")
        layer, pool = self.edit_layer(model), self.pool_for(usable)
        texts = [c.prompt for c in usable] + [c.rephrase for c in usable]
        feats = cached_prompt_features(model, tok, texts, layer, pool, cache=hp.feature_cache)
        anchor, positive = feats.split(len(usable))
        counts = torch.tensor([len(c.neighbours) for c in usable])
        nb_texts = [n.prompt for c in usable for n in c.neighbours]
        nb_feats = cached_prompt_features(model, tok, nb_texts, layer, pool, cache=hp.feature_cache)
        meta = {"model": model_name(model), "margin": self.margin_for(usable), "train_cases": len(usable)}
        config = EncoderConfig(d_in=anchor.size(1), d_out=hp.key_dim, pool=pool, layer=layer, meta=meta)
        owner = torch.repeat_interleave(torch.arange(len(usable)), counts)
        return TrainingFeatures(anchor, positive, nb_feats, owner, config, usable)

    # --- the edit as data: GRACE's codebook and the encoder that keys it ----------------------
    def key_width(self, model) -> int:
        return self.encoder.config.d_out if self.use_encoder and self.encoder else super().key_width(model)

    def edit_state(self, model) -> EditState:
        """GRACE's codebook plus the encoder (`encoder.*` tensors, its config in meta)."""
        state = super().edit_state(model)
        if self.use_encoder:
            assert self.encoder is not None  # an edit exists, so keys were computed
            tensors, config = encoder_state(self.encoder)
            state.tensors.update({f"encoder.{k}": v for k, v in tensors.items()})
            state.meta["encoder"] = config
        return state

    def _load_edit(self, model, tok, state: EditState, result: EditResult) -> None:
        """Take the saved encoder (no training: the editor needs no fit), then GRACE's codebook."""
        if self.use_encoder:
            mine = {
                k.removeprefix("encoder."): v for k, v in state.tensors.items() if k.startswith("encoder.")
            }
            try:
                encoder = encoder_from_state(mine, state.meta.get("encoder") or {})
            except ValueError as err:
                raise IntegrityError(f"the saved {self.name} edit's key encoder: {err}") from None
            if not self.reads(encoder.config.pool):
                raise IntegrityError(
                    f"the saved encoder pools {encoder.config.pool!r}, {self.name} {self.pool!r}"
                )
            previous = self.encoder
            result.undo.append(lambda: setattr(self, "encoder", previous))
            self.encoder = encoder.to(next(model.parameters()).device)
            state = EditState(
                {k: v for k, v in state.tensors.items() if not k.startswith("encoder.")}, state.meta
            )
        super()._load_edit(model, tok, state, result)

    def save(self, directory: str | Path) -> None:
        if not self.use_encoder:
            raise NotSavableError(f"{self.name} has no trained part to save")
        if self.encoder is None:
            raise RuntimeError(f"{self.name}: nothing to save; call fit() first")
        save_encoder(self.encoder, directory)

    def load(self, directory: str | Path) -> None:
        if not self.use_encoder:
            raise NotSavableError(f"{self.name} has no trained part to load")
        encoder = load_encoder(directory)
        if not self.reads(encoder.config.pool):
            raise ValueError(
                f"{directory}: encoder was trained on {encoder.config.pool!r} keys, {self.name} uses {self.pool!r}"
            )
        self.encoder = encoder


class NoCLHParams(GraceHParams):
    """GRACE's hparams with A-GRACE's value budget: the ablation differs from A-GRACE in the key alone."""

    min_steps: int = CARRY_STEPS


class AGraceNoCL(AGrace):
    """Ablation: the mean prompt activation as the key, no encoder (nothing to train)."""

    name = "agrace-no-cl"
    HParams = NoCLHParams
    trainable = False
    use_encoder = False


class AGraceLast(AGrace):
    """Ablation: the contrastive encoder over GRACE's last-token key instead of the mean."""

    name = "agrace-last"
    pool = "last"
