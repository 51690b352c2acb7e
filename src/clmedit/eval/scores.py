"""A case's scores as the protocol gives them (eval.protocol) and their means: pydantic only, no torch,
so results files are read (clmedit.results, the report) without loading a model library.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel, Field


class Triple(BaseModel):
    """EM, BLEU and ROUGE-L of one check, each in [0, 1]."""

    em: float
    bleu: float
    rouge_l: float


class CaseOutputs(BaseModel):
    """The stripped texts behind the scores (kept in the run's JSONL for inspection)."""

    prompt: str = ""
    rephrase: str = ""
    neighbours: list[str] = Field(default_factory=list)
    fluency: list[str] = Field(default_factory=list)


class CaseScores(BaseModel):
    case_id: str = ""
    effectiveness: Triple
    generalization: Triple
    specificity: Triple
    fluency: float | None = Field(None, description="mean n-gram entropy (bits); None when not measured")
    budget_short: list[str] = Field(
        default_factory=list, description="checks whose budget is shorter than the target after their text"
    )
    outputs: CaseOutputs = Field(default_factory=CaseOutputs)


def summarise(scores: Sequence[CaseScores]) -> dict:
    """Means over cases, x100: {'n', 'effectiveness': {'em','bleu','rouge_l'}, ..., 'fluency'}."""
    if not scores:
        raise ValueError("no case scores to summarise")
    out: dict = {"n": len(scores)}
    for group in ("effectiveness", "generalization", "specificity"):
        triples = [getattr(s, group) for s in scores]
        out[group] = {k: 100 * statistics.fmean(getattr(t, k) for t in triples) for k in Triple.model_fields}
    flu = [s.fluency for s in scores if s.fluency is not None]
    out["fluency"] = 100 * statistics.fmean(flu) if flu else None
    return out
