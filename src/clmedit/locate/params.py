"""Hparams shared by the locate-then-edit editors (ROME, MEMIT, PMET): one definition, one translation
of the study's (EasyEdit) YAML keys."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from clmedit.config import EditorHParams, study_keys
from clmedit.locate.stats import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from clmedit.locate.values import ValueParams

log = logging.getLogger(__name__)

# the study's key -> ours
STUDY_KEYS = {
    "layers": "layers",
    "v_num_grad_steps": "steps",
    "v_lr": "lr",
    "v_weight_decay": "weight_decay",
    "clamp_norm_factor": "clamp_factor",
    "kl_factor": "kl_factor",
    "mom2_adjustment": "mom2_adjustment",
    "mom2_update_weight": "mom2_weight",
    "mom2_n_samples": "stats_samples",
    "nll_loss_factor": "nll_factor",
}


class LocateHParams(EditorHParams, ValueParams):
    """Layers to edit, the value optimisation (ValueParams) and the covariance statistics."""

    STUDY_KEYS = frozenset(STUDY_KEYS) | study_keys(
        "fact_token v_loss_layer mom2_dataset mom2_dtype layer_selection nll_loss_factor"
    )

    layers: list[int] = Field(default_factory=lambda: [5], description="edited layers (reference depth)")
    mom2_adjustment: bool = Field(False, description="weigh the update by C = E[k k^T] of a code corpus")
    mom2_weight: float = Field(15000.0, gt=0, description="lambda of lambda*C + K^T K [mom2_update_weight]")
    stats_corpus: str | None = Field(None, description="text/JSONL file or folder; None = the stdlib's .py")
    stats_samples: int = Field(DEFAULT_SAMPLES, ge=1, description="corpus windows for the statistics")
    stats_seq_len: int = Field(DEFAULT_SEQ_LEN, ge=8, description="tokens per corpus window")
    context_keys: bool = Field(
        True, description="fit the value and average the key over generated context prefixes (study)"
    )

    def value_params(self) -> ValueParams:
        return ValueParams(**self.model_dump(include=set(ValueParams.model_fields)))

    @classmethod
    def from_study(cls, raw: dict[str, Any]):
        """Keep the study's keys we model (STUDY_KEYS); module templates etc. live in ArchAdapter."""
        ours = {STUDY_KEYS[k]: v for k, v in raw.items() if k in STUDY_KEYS}
        ours.update({k: v for k, v in raw.items() if k in cls.model_fields})
        dropped = sorted(set(raw) - set(STUDY_KEYS) - set(cls.model_fields))
        if dropped:
            log.debug("%s: ignoring study keys %s", cls.__name__, dropped)
        return cls.build(ours, "study hparams")
