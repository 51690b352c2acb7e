"""The build's step 1: reading the source a build names (data.build.BuildConfig) as RawExamples."""

from __future__ import annotations

from collections import Counter
from typing import Any

from clmedit.data.sources import RawExample, SourceError, codesearchnet, conala, python_sources


def read_source(cfg: Any, skipped: Counter) -> list[RawExample]:
    """The build's step 1: the source `cfg` (a data.build.BuildConfig) names, as RawExamples (bad
    records skipped and counted)."""
    src, task = cfg.source, cfg.task
    if src == "stdlib":
        return python_sources.mine_python(
            task, None, skipped, max_target_chars=cfg.max_target_chars, progress=cfg.progress
        )
    if src.startswith("hf:"):
        name = src[3:]
        return (
            conala.read_hf_conala(name, skipped)
            if task == "cnle"
            else codesearchnet.read_hf_codesearchnet(name, skipped)
        )
    if not cfg.paths:
        raise SourceError(f"--source {src} needs at least one path")
    if src == "python-sources":
        return python_sources.mine_python(
            task, cfg.paths, skipped, max_target_chars=cfg.max_target_chars, progress=cfg.progress
        )
    if src == "conala":
        if task != "cnle":
            raise SourceError("CoNaLa is an NL->code source: use it with --task cnle")
        return conala.read_conala(cfg.paths, skipped)
    if src == "codesearchnet":
        if task != "csne":
            raise SourceError("CodeSearchNet is a code->NL source: use it with --task csne")
        return codesearchnet.read_codesearchnet(cfg.paths, skipped)
    raise SourceError(f"unknown source {src!r}; use stdlib, python-sources, conala, codesearchnet or hf:NAME")
