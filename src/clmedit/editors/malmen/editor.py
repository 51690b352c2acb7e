"""MALMEN (Tan et al., ICLR 2024): a meta-learned hypernetwork edits many facts at once.

    apply(cases):  pairs (u_t, g_t) of every target token of every case, on the unedited model
                   S_l = ridge_solve(U_l, net_l(U_l, G_l), lambda_l)   for the last 5 down_proj
                   W_l <- W_l + S_l                                      (all edits in one shift)

The hypernetwork is trained by `fit` (meta-training on a training split, see train.py) or
loaded from a folder (`hypernet_dir`, or `load`). Invariant: `restore()` writes back the
original down_proj weights bitwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from clmedit.config import EditorHParams, study_keys
from clmedit.data.schema import EditRequest
from clmedit.editors.base import Editor, EditResult, backup_weights
from clmedit.editors.malmen.hypernet import HypernetConfig, MalmenNet, load_hypernet, save_hypernet
from clmedit.editors.malmen.pairs import key_grad_pairs
from clmedit.editors.malmen.store import Where
from clmedit.editors.malmen.train import meta_train
from clmedit.errors import InputError
from clmedit.models.arch import arch_of

log = logging.getLogger(__name__)

STUDY_RANK, STUDY_WIDTH = 1920, 11008 + 4096  # rank 1920 for a 7B model's d_mlp + d_model


class MalmenHParams(EditorHParams):
    STUDY_KEYS = study_keys(
        "inner_params rank n_blocks meta_lr loc_coef max_iters lr archive dropout train_base "
        "no_grad_layers max_grad_norm token n_edits editor_batch_size silent log_interval "
        "eval_log_interval final_eval val_interval early_stop_patience early_stop_key eval_only "
        "debug save val_batch_size val_steps"
    )
    TRAINED_FROM: ClassVar[str | None] = "hypernet_dir"

    layers: list[int] = Field([27, 28, 29, 30, 31], description="edited down_proj layers (the last 5 of 32)")
    rank: int = Field(0, ge=0, description="block bottleneck; 0: 1920 scaled by (d_mlp + d_model) / 15104")
    blocks: int = Field(2, ge=1, description="residual blocks of the hypernetwork")
    init_lr: float = Field(1e-4, gt=0, description="initial per-layer step size eta_l")
    init_lambda: float = Field(1.0, gt=0, description="initial per-layer ridge weight lambda_l")
    meta_lr: float = Field(1e-5, gt=0, description="Adam learning rate of meta-training")
    scale_lr: float = Field(
        1e-2, gt=0, description="Adam learning rate of the per-layer log step sizes and log ridge weights"
    )
    calibrate_lr: bool = Field(
        True,
        description="before training, pick eta_l's start from a log grid around init_lr (training split)",
    )
    steps: int = Field(1000, ge=0, description="meta-training steps")
    batch_size: int = Field(4, ge=1, description="cases per meta-training step")
    edit_coef: float = Field(1.0, ge=0, description="weight of the post-edit NLL on prompt and rephrase")
    loc_coef: float = Field(1.0, ge=0, description="weight of the KL on neighbours")
    loc_neighbours: int = Field(1, ge=1, description="neighbours per case in the locality loss")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="training cases held out for model selection")
    val_every: int = Field(100, ge=1, description="steps between validation checks")
    tokens: Literal["target", "all"] = Field("target", description="positions giving (key, gradient) pairs")
    pair_batch_size: int = Field(8, ge=1, description="cases per forward/backward when extracting pairs")
    store: Where = Field(
        "disk", description="where meta-training keeps per-case pairs and hidden states: disk, cpu, device"
    )
    hypernet_dir: str | None = Field(None, description="folder of a trained hypernetwork to load")

    @classmethod
    def from_study(cls, raw: dict[str, Any]) -> MalmenHParams:
        """Read the study's MALMEN YAML: inner_params (layers), rank, n_blocks, meta_lr, loc_coef,
        max_iters (steps), batch_size, val_interval; its other (trainer) keys are ignored."""
        kw: dict[str, Any] = {}
        layers = [re.search(r"layers?[.\[](\d+)", str(p)) for p in raw.get("inner_params") or []]
        if layers:
            if not all(layers):
                raise InputError(f"cannot find a layer index in inner_params {raw['inner_params']!r}")
            kw["layers"] = [int(m.group(1)) for m in layers]
        names = {"rank": "rank", "n_blocks": "blocks", "meta_lr": "meta_lr", "loc_coef": "loc_coef",
                 "max_iters": "steps", "batch_size": "batch_size", "val_interval": "val_every"}  # fmt: skip
        kw.update({ours: raw[k] for k, ours in names.items() if raw.get(k) is not None})
        return cls.build(kw, "study MALMEN hparams")


class Malmen(Editor):
    name = "malmen"
    SNAPSHOT_RESUME = True  # its edit_state is its whole lifelong state
    HParams = MalmenHParams
    trainable = True
    APPLY_SECONDS = {"cnle": 0.3, "csne": 0.6}

    STEP_SECONDS: ClassVar[dict[str, float]] = {"cnle": 1.4, "csne": 5.2}  # one meta-step, by task

    def fit_seconds(self, task: str) -> float:
        return self.STEP_SECONDS.get(task, self.STEP_SECONDS["csne"]) * self.hparams.steps  # the meta-training steps dominate

    def __init__(self, hparams: MalmenHParams | None = None):
        super().__init__(hparams)
        self.net: MalmenNet | None = None
        self.trained_layers: list[int] | None = None  # absolute layer indices the net was trained for
        if self.hparams.hypernet_dir:
            self.load(self.hparams.hypernet_dir)

    def edited_layers(self, model) -> list[int]:
        return self.hparams.layers_for(self.hparams.layers, arch_of(model).num_layers(model))

    def new_net(self, model) -> MalmenNet:
        arch = arch_of(model)
        layers = self.edited_layers(model)
        d_key = arch.mlp_dim(model, layers[0])
        d_value = arch.weight_out_in(arch.down_proj_module(model, layers[0])).shape[0]
        rank = self.hparams.rank or max(32, round(STUDY_RANK * (d_key + d_value) / STUDY_WIDTH))
        hp = self.hparams
        return MalmenNet(
            HypernetConfig(d_key, d_value, len(layers), rank, hp.blocks), hp.init_lr, hp.init_lambda
        )

    def fit(self, model, tok, train_cases, unprobed: Sequence[str] = (), **kwargs: Any) -> dict[str, Any]:
        """Meta-train a fresh hypernetwork on `train_cases`; kwargs override hparams (e.g. steps=200).
        `unprobed` is not used (a hypernetwork learns from edits, not from unlabelled inputs)."""
        self.hparams = self.hparams.override("fit arguments", **kwargs)
        layers = self.edited_layers(model)
        torch.manual_seed(self.hparams.seed)  # the fresh net's init too: a fit depends on its inputs only
        self.net, history = meta_train(model, tok, train_cases, self.new_net(model), layers, self.hparams)
        self.trained_layers = layers
        return history

    def save(self, directory: str | Path) -> None:
        if self.net is None:
            raise RuntimeError("malmen: nothing to save; call fit() first")
        save_hypernet(
            self.net, directory, {"layers": self.trained_layers, "hparams": self.hparams.model_dump()}
        )

    def load(self, directory: str | Path) -> None:
        self.net, extra = load_hypernet(directory)
        self.trained_layers = extra.get("layers")

    def _apply(self, model, tok, cases: list[EditRequest], result: EditResult) -> None:
        """W_l += S_l for every edited layer, all cases jointly; see the module docstring."""
        if self.net is None:
            raise RuntimeError(
                "malmen needs a trained hypernetwork: call fit(model, tok, train_cases), load(dir), "
                "or set hypernet_dir (train one with `clmedit train --editor malmen`)"
            )
        layers = self.edited_layers(model)
        if self.trained_layers is not None and list(self.trained_layers) != layers:
            raise ValueError(
                f"hypernetwork trained for layers {self.trained_layers}, this model edits {layers}"
            )
        arch = arch_of(model)
        device = next(model.parameters()).device
        net = self.net.to(device).eval()
        pairs = key_grad_pairs(model, tok, cases, layers, self.hparams.pair_batch_size, self.hparams.tokens)
        with torch.no_grad():
            shifts = {l_: net.weight_shift(i, pairs.keys[l_], pairs.grads[l_]) for i, l_ in enumerate(layers)}
        modules = {l_: arch.down_proj_module(model, l_) for l_ in layers}
        # registered before the loop: a failure at any layer undoes the layers already shifted
        result.undo.append(
            backup_weights({arch.path("down_proj", l_): m.weight for l_, m in modules.items()})
        )
        with torch.no_grad():
            for l_, module in modules.items():
                weight = arch.weight_out_in(module)  # (d_out, d_in) view, in place
                weight.add_(shifts[l_].to(weight.dtype))
        norms = {l_: float(s.norm()) for l_, s in shifts.items()}
        result.info = {"shift_norms": norms, "pairs": int(pairs.owner.numel())}
