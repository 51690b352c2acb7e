"""The run configuration: everything that defines one run, validated on construction.

Light to import (pydantic only), so the CLI builds its options from these fields: each setting's
default and help are declared once, here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clmedit.errors import InputError

MAX_SEED = 2**32 - 1  # numpy's seeds (set with torch's before every edit) are 32-bit
DEFAULT_CHECKPOINTS = "1,10,100,1000"


class RunConfig(BaseModel):
    """Everything that defines a run; saved into summary.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("smollm2-135m", description="model name, HF id, local path or GGUF file")
    editor: str = Field("none", description="registered editor name ('none' = the unedited row)")
    data: str = Field(description="case JSONL path, or 'default:cnle' / 'default:csne'")
    out: Path = Field(description="run directory (cases.jsonl, summary.json, table.md)")
    limit: int | None = Field(None, gt=0, description="use the first N cases (before sharding)")
    preset: str | None = Field(None, description="hparams preset name or YAML path; default: by model")
    hparams: dict[str, Any] = Field(default_factory=dict, description="hparams overrides")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed fixed before every apply and evaluation")
    shard: str = Field("0/1", description="'i/n': run every n-th case starting at i")
    batch_size: int = Field(1, gt=0, description="cases per apply call (1 = single edits)")
    folds: int = Field(1, ge=1, description="k-fold protocol for trainable editors (the study: 2)")
    eval_limit: int | None = Field(
        None, gt=0, description="with --folds: score the first N cases of each fold (training uses whole folds)"
    )
    folds_overlap: bool = Field(
        False,
        description="with --folds: fit on the other folds as they are, probes of the test fold included "
        "(the study's split; default: probe-disjoint, see run/folds.py)",
    )
    fluency: bool = Field(True, description="compute the fluency metric (sampling; the slowest part)")
    budget: Literal["study", "in-context"] = Field(
        "study",
        description="new tokens for effectiveness/generalization: 'study' = len(tok.encode(target)) (the "
        "paper's rule; can be shorter than the target after the prompt), 'in-context' = the target's tokens after it",
    )
    evaluation: Literal["fast", "reference"] = Field(
        "reference",
        description="evaluation path: 'reference' (model.generate, three calls per case) or 'fast' (eval.decode); same outputs",
    )
    device: str | None = Field(None, description="torch device; default: cuda if available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto: float32 on CPU, the checkpoint's dtype on GPU"
    )
    verify_restore: bool = Field(False, description="debug: checksum the weights after every restore")
    keys: bool = Field(False, description="record keys and key distances (editors with key_record)")
    answers_from: str | None = Field(None, description="released answers to use (e.g. CodeLlama-7b-hf)")
    sequential: int | None = Field(
        None, gt=0, description="lifelong editing: apply the first N cases one after another, never restoring"
    )
    checkpoints: str = Field(
        DEFAULT_CHECKPOINTS, description="with --sequential: after how many edits every edited case is evaluated"
    )
    score_sample: int | None = Field(
        None, gt=0, description="with --sequential: score a fixed random sample of K edited cases at each "
        "checkpoint (drawn with the run's seed; default: every edited case)",
    )
    snapshot_every: int = Field(
        100, ge=0, description="with --sequential: save the edit every N edits and at every checkpoint "
        "(checkpoints/snapshot, the latest only), so a rerun resumes from it instead of re-applying every "
        "recorded edit; 0: at checkpoints only",
    )

    @field_validator("out", mode="before")
    @classmethod
    def _check_out(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise InputError("is empty; give the run's folder")
        return v

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, v: str) -> str:
        parse_shard(v)
        return v

    @field_validator("checkpoints")
    @classmethod
    def _check_checkpoints(cls, v: str) -> str:
        parse_checkpoints(v)
        return v

    @model_validator(mode="after")
    def _no_option_ignored(self) -> RunConfig:
        """An option that only means something with another one is refused alone, never ignored."""
        if self.eval_limit is not None and self.folds < 2:
            raise InputError("--eval-limit scores the first N cases of each fold: it needs --folds 2 or more")
        if self.sequential is None and parse_checkpoints(self.checkpoints) != parse_checkpoints(DEFAULT_CHECKPOINTS):
            raise InputError("--checkpoints says when a sequential run evaluates: it needs --sequential N")
        if self.sequential is None and self.score_sample is not None:
            raise InputError("--score-sample says what a sequential run's checkpoints score: it needs --sequential N")
        return self

    @property
    def shard_tuple(self) -> tuple[int, int]:
        return parse_shard(self.shard)


def parse_shard(spec: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise InputError(f"shard must look like 'i/n' with 0 <= i < n (e.g. '0/4'), got {spec!r}")
    return int(m[1]), int(m[2])


def parse_checkpoints(spec: str) -> list[int]:
    """'1,10,100' -> [1, 10, 100]: positive edit counts, sorted, without repeats."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(
            f"checkpoints must be positive edit counts separated by commas (e.g. '1,10,100'), got {spec!r}"
        )
    return sorted({int(p) for p in parts})
