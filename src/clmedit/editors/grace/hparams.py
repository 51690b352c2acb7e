"""GRACE's hparams: the study's settings (layer 27 of 32, 30 Adam steps at lr 1.0, radius 1.0, cold
values written at the last prompt token) and our `steps` replacement; `from_study` reads its YAML."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from clmedit.config import EditorHParams, study_keys
from clmedit.editors.grace.codebook import Distance, Expand

log = logging.getLogger(__name__)

Replacement = Literal["last", "key", "steps"]
DECODE = {"last": "lookup", "key": "none", "steps": "steps"}  # GraceLayer's mode at decoded tokens


class GraceHParams(EditorHParams):
    STUDY_KEYS = study_keys(
        "inner_params edit_lr n_iter eps dist_fn val_init replacement eps_expand dropout num_pert "
        "reg val_reg val_train"
    )

    layer: int = Field(27, description="down_proj of this layer (of reference_layers) is wrapped")
    edit_lr: float = Field(1.0, gt=0, description="Adam learning rate of the value")
    n_iter: int = Field(30, ge=1, description="optimisation steps per value (at most)")
    stop_when_decoded: bool = Field(
        True, description="stop a value's optimisation once greedy decoding gives the target (teacher-forced)"
    )
    min_steps: int = Field(
        0, ge=0, description="steps a value always takes before stop_when_decoded may end it (n_iter caps it)"
    )
    eps: float = Field(1.0, gt=0, description="radius of a new codebook entry")
    dist_fn: Distance = Field("euc", description="key distance: euc (L2) or cos (1 - cosine)")
    val_init: Literal["warm", "cold"] = Field("cold", description="warm: unedited outputs; cold: U[0,1)")
    replacement: Replacement = Field(
        "last",
        description="last: the study's GRACE (key token + decoded tokens whose own key matches); "
        "key: key token only (the study's A-GRACE); steps: one value per decoded token (ours)",
    )
    eps_expand: Expand = Field("coverage", description="same-label key: grow radius or move key")
    # what the study's `replacement: replace_last` means for this editor in its code
    study_replacement: ClassVar[Replacement] = "last"

    @classmethod
    def from_study(cls, raw: dict[str, Any]) -> GraceHParams:
        """Read the study's GRACE YAML (inner_params, edit_lr, n_iter, eps, dist_fn, ...)."""
        kw: dict[str, Any] = {}
        params = raw.get("inner_params") or []
        if params:
            found = re.search(r"layers?[.\[](\d+)", str(params[0]))
            if not found:
                raise ValueError(f"cannot find a layer index in inner_params {params[0]!r}")
            kw["layer"] = int(found.group(1))
        for key in ("edit_lr", "n_iter", "eps", "dist_fn", "val_init"):
            if raw.get(key) is not None:
                kw[key] = raw[key]
        if raw.get("replacement") is not None:
            if raw["replacement"] != "replace_last":
                raise ValueError(
                    f"GRACE replacement {raw['replacement']!r} is not implemented; the study uses "
                    "'replace_last' (set replacement: last, key or steps in our own YAML)"
                )
            kw["replacement"] = cls.study_replacement
        if raw.get("eps_expand") is not None:
            kw["eps_expand"] = "moving_average" if "avg" in str(raw["eps_expand"]) else "coverage"
        ignored = sorted(set(raw) - set(kw) - {"inner_params", "replacement", "eps_expand"})
        log.debug("GRACE from_study: ignoring keys %s", ignored)
        return cls.build(kw, "study GRACE hparams")
