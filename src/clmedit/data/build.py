"""The CLMEEval build pipeline, one function per step:

  read -> length filter -> (judge) -> dedupe -> split -> rephrase -> neighbours

Split: CNLE targets a seeded 1/6 of the examples; CSNE targets the source's test split, or a seeded
1/6 when the source has none (e.g. the standard library). Only examples with an output can be
targeted; the rest is the non-targeted pool from which the k nearest neighbours of each targeted
input are drawn. Rephrasing runs before neighbours so that `limit` counts finished cases (a CSNE
function without a safe renaming is dropped). Every skipped example is counted by reason, and the
statistics (counts, Table III lengths, Table II judge levels, step timings) are saved next to the
JSONL as `<name>.stats.json`. Same config, seed and Python version -> same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clmedit.data import rename, rewrite
from clmedit.data.schema import EditCase, Neighbour, Task, format_prompt, write_cases
from clmedit.data.sources import RawExample, SourceError, collapse
from clmedit.data.sources.python_sources import stdlib_fingerprint
from clmedit.data.sources.read import read_source
from clmedit.data.stats import TokenCounter, dataset_stats, stats_path, token_counter
from clmedit.data.unprobed import unprobed_path, unprobed_prompts, write_unprobed
from clmedit.files import atomic_write_text, cache_root, is_sealed, locked, write_seal

log = logging.getLogger(__name__)

PIPELINE_VERSION = 2  # bump when a change alters built datasets, so caches rebuild


class BuildConfig(BaseModel):
    """Everything that determines a built dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task
    source: str = Field(
        "stdlib", description="stdlib | python-sources | conala | codesearchnet | hf:NAME[:CONFIG]"
    )
    paths: tuple[str, ...] = Field((), description="files or folders of the source")
    seed: int = Field(0, description="seeds the split, renaming and any sampling")
    limit: int | None = Field(None, ge=1, description="at most this many edit cases")
    pool_limit: int | None = Field(None, ge=1, description="subsample the neighbour pool to this size")
    target_fraction: float = Field(1 / 6, gt=0, lt=1, description="share of examples targeted (seeded split)")
    k: int = Field(5, ge=1, description="neighbours per case")
    embedder: str = Field(
        "minilm", description="'minilm' (packaged all-MiniLM-L6-v2), any s-t name/path, or 'bm25'"
    )
    rephrase: Literal["auto", "rule", "human", "llm"] = Field(
        "auto", description="CNLE rephrase; auto = human, else rule"
    )
    llm: str = Field("local", description="paraphrase backend: local[:MODEL] | openai:MODEL")
    paraphrase_threshold: float = Field(0.75, description="min embedding cosine of an accepted paraphrase")
    judge: str | None = Field(None, description="judge backend (local[:MODEL] | openai:MODEL); None skips")
    judge_min_level: int = Field(5, ge=1, le=5, description="keep pairs judged at least this relevant")
    tokenizer: str | None = Field(None, description="tokenizer for the code-length limit; None = regex proxy")
    max_code_tokens: int = Field(512, description="drop examples whose code is longer")
    max_target_chars: int = Field(64, description="longest one-line return expression mined for CNLE")
    progress: bool = Field(True, description="tqdm progress bars")


@dataclass
class BuildResult:
    cases: list[EditCase]
    stats: dict
    path: Path | None = None
    unprobed: list[str] = field(default_factory=list)  # inputs no case is scored on (data.unprobed)


@dataclass
class _Run:
    """Mutable bookkeeping of one build."""

    skipped: Counter = field(default_factory=Counter)
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per step
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds (all threads): load-independent

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.cpu[name] = round(time.process_time() - cpu, 3)
        log.info("%s: %.1f s (%.1f s CPU)", name, self.timings[name], self.cpu[name])


# --- steps --------------------------------------------------------------------------------------


def filter_length(
    examples: list[RawExample], task: Task, counter: TokenCounter, max_tokens: int, skipped: Counter
) -> list[RawExample]:
    """Step 1b: drop examples whose code (input for CSNE, output for CNLE) exceeds `max_tokens`."""
    kept = []
    for ex in examples:
        code = ex.input if task == "csne" else ex.output
        if code is not None and counter.count(code) > max_tokens:
            skipped[f"code over {max_tokens} tokens"] += 1
        else:
            kept.append(ex)
    return kept


def dedupe(examples: list[RawExample], task: Task, skipped: Counter) -> list[RawExample]:
    """Step 3: one example per input (whitespace-collapsed; case-folded for NL). An example with an
    output replaces an earlier pool-only duplicate."""
    seen: dict[str, int] = {}
    out: list[RawExample | None] = []
    for ex in examples:
        key = collapse(ex.input).lower() if task == "cnle" else collapse(ex.input)
        if key in seen:
            skipped["duplicate input"] += 1
            j = seen[key]
            if out[j].output is None and ex.output is not None:
                out[j] = ex
            continue
        seen[key] = len(out)
        out.append(ex)
    return out


def split(
    examples: list[RawExample], task: Task, seed: int, fraction: float = 1 / 6
) -> tuple[list[RawExample], list[RawExample]]:
    """Step 4: (targeted in a seeded order, non-targeted pool in source order)."""
    rng = random.Random(seed)
    eligible = [i for i, ex in enumerate(examples) if ex.output is not None]
    if task == "csne" and any(ex.split == "test" for ex in examples):
        chosen = [i for i in eligible if examples[i].split == "test"]
        rng.shuffle(chosen)
        banned = {i for i, ex in enumerate(examples) if ex.split == "test"}
    else:
        rng.shuffle(eligible)
        chosen = eligible[: min(len(eligible), max(1, round(len(examples) * fraction)))]
        banned = set(chosen)
    return [examples[i] for i in chosen], [ex for i, ex in enumerate(examples) if i not in banned]


def make_rephrases(
    targeted: list[RawExample], pool: list[RawExample], cfg: BuildConfig, run: _Run, encode=None
) -> list[tuple[RawExample, str, dict]]:
    """Step 5: (example, raw rephrase, meta) for up to `cfg.limit` targeted examples."""
    out = []
    if cfg.task == "csne":
        names = rename.mine_identifier_pool(ex.input for ex in [*targeted, *pool])
        for ex in targeted:
            result = rename.rename_identifiers(ex.input, names, random.Random(f"{cfg.seed}:{ex.uid}"))
            if result is None:
                run.skipped["no safe renaming (targeted)"] += 1
                continue
            out.append((ex, result[0], {"rephrase_kind": "rename", "renamed": result[1]}))
            if cfg.limit and len(out) >= cfg.limit:
                break
        return out
    targeted = targeted[: cfg.limit] if cfg.limit else targeted
    llm: list[tuple[str | None, str | None]] = [(None, None)] * len(targeted)
    if cfg.rephrase == "llm":
        from clmedit.data.llm import make_backend

        llm = rewrite.llm_paraphrases(
            [ex.input for ex in targeted], make_backend(cfg.llm), encode, cfg.paraphrase_threshold
        )
    for ex, (para, problem) in zip(targeted, llm):
        if problem:
            run.skipped[f"llm {problem} (fell back)"] += 1
        human = ex.human_rephrase
        if human and rewrite.paraphrase_problem(ex.input, human, None, 0) is not None:
            # auto/llm: a human rewrite must pass the same checks (keeps identifiers and literals);
            # --rephrase human takes it whenever it differs from the input.
            human = (
                human
                if cfg.rephrase == "human" and rewrite.normalized(human) != rewrite.normalized(ex.input)
                else None
            )
        if para:
            out.append((ex, para, {"rephrase_kind": "llm"}))
        elif human and cfg.rephrase != "rule":
            out.append((ex, human, {"rephrase_kind": "human"}))
        else:
            out.append((ex, rewrite.reword(ex.input), {"rephrase_kind": "rule"}))
    return out


def find_neighbours(queries: Sequence[str], pool: Sequence[str], cfg: BuildConfig, embedder=None):
    """Step 6: indices and scores (Q, k) of the k nearest pool inputs of every query."""
    from clmedit.data.neighbours import nearest

    return nearest(queries, pool, cfg.k, embedder, progress=cfg.progress)


# --- the pipeline -------------------------------------------------------------------------------


def build_dataset(cfg: BuildConfig, out: str | Path | None = None) -> BuildResult:
    """Run every step; write `out` (JSONL), `<out stem>.stats.json` and `<out stem>.unprobed.jsonl`
    (the inputs no case is scored on, `data.unprobed`) when `out` is given.

    Neighbour answers are not part of a built dataset: they depend on a model, and are filled
    per model before a run (`run.prepare.ensure_base_answers`).
    """
    run = _Run()
    counter = token_counter(cfg.tokenizer)
    with run.step("read"):
        examples = read_source(cfg, run.skipped)
    run.counts["read"] = len(examples)
    with run.step("length filter"):
        examples = filter_length(examples, cfg.task, counter, cfg.max_code_tokens, run.skipped)
    judge_counts = None
    if cfg.judge and cfg.task == "cnle":
        from clmedit.data.judge import judge_examples
        from clmedit.data.llm import make_backend

        with run.step("judge"):
            examples, judge_counts = judge_examples(
                examples, make_backend(cfg.judge), cfg.judge_min_level, cfg.progress
            )
        run.counts["after judge"] = len(examples)
    with run.step("dedupe"):
        examples = dedupe(examples, cfg.task, run.skipped)
    run.counts["after dedupe"] = len(examples)
    targeted, pool = split(examples, cfg.task, cfg.seed, cfg.target_fraction)
    if cfg.pool_limit and len(pool) > cfg.pool_limit:
        pool = random.Random(cfg.seed + 1).sample(pool, cfg.pool_limit)
    run.counts.update(targeted=len(targeted), pool=len(pool))
    if not pool:
        raise SourceError("nothing left for the neighbour pool: the source is too small")
    embedder = None
    if cfg.embedder != "bm25":
        from clmedit.data.neighbours import load_embedder

        with run.step("load embedder"):
            embedder = load_embedder(cfg.embedder)
    with run.step("rephrase"):
        items = make_rephrases(targeted, pool, cfg, run, embedder.encode if embedder else None)
    if not items:
        raise SourceError(f"no edit case could be built (skipped: {dict(run.skipped)})")
    with run.step("neighbours"):
        idx, scores = find_neighbours(
            [ex.input for ex, _, _ in items], [ex.input for ex in pool], cfg, embedder
        )
    cases = [
        _case(cfg.task, ex, reph, meta, [pool[j] for j in row], sc)
        for (ex, reph, meta), row, sc in zip(items, idx, scores)
    ]
    run.counts["cases"] = len(cases)
    used = {id(ex) for ex, _, _ in items}
    unprobed = unprobed_prompts(
        (format_prompt(cfg.task, ex.input) for ex in examples if id(ex) not in used), cases
    )
    run.counts["unprobed"] = len(unprobed)
    stats = dataset_stats(
        cfg.model_dump(), run.counts, run.skipped, run.timings, cases, counter, judge_counts
    )
    stats.update(pipeline_version=PIPELINE_VERSION, cpu_seconds=run.cpu)
    path = None
    if out is not None:
        path = write_cases(out, cases)
        write_unprobed(path, unprobed)
        atomic_write_text(stats_path(path), json.dumps(stats, indent=2) + "\n")
    return BuildResult(cases, stats, path, unprobed)


def _case(
    task: Task, ex: RawExample, rephrase_text: str, meta: dict, neighbours: list[RawExample], scores
) -> EditCase:
    digest = hashlib.sha1(f"{ex.uid}\n{ex.input}".encode()).hexdigest()[:12]
    return EditCase(
        case_id=f"{task}-{digest}",
        task=task,
        prompt=format_prompt(task, ex.input),
        target=ex.output,
        rephrase=format_prompt(task, rephrase_text),
        neighbours=[Neighbour(prompt=format_prompt(task, n.input)) for n in neighbours],
        meta={
            **ex.meta, **meta, "uid": ex.uid, "raw_input": ex.input,
            "neighbour_uids": [n.uid for n in neighbours], "neighbour_scores": [round(float(s), 4) for s in scores],
        },
    )  # fmt: skip


def default_dataset(
    task: str, cache_dir: Path | None = None, limit: int | None = None, seed: int = 0
) -> Path:
    """The standard-library dataset for `task`, built once and cached under `$CLMEDIT_CACHE/data`
    (default `~/.cache/clmedit`).

    Keyed by what it depends on: the build settings, the pipeline version and a fingerprint of the
    standard library's sources. A seal (size, lines, sha256) is written with it; a cached file that
    no longer matches its seal (cut short, edited, a bad line) is rebuilt.
    """
    if task not in ("cnle", "csne"):
        raise ValueError(f"unknown task {task!r}; expected 'cnle' or 'csne'")
    cfg = BuildConfig(task=task, seed=seed, limit=limit)
    key = hashlib.sha256(
        f"{cfg.model_dump_json()}|v{PIPELINE_VERSION}|{stdlib_fingerprint()}".encode()
    ).hexdigest()[:12]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = f"{task}-stdlib-py{py}-seed{seed}{f'-n{limit}' if limit else ''}-{key}.jsonl"
    path = cache_root(cache_dir) / "data" / name
    with locked(path):  # two runs starting together build it once
        if not is_sealed(path) or not unprobed_path(path).is_file():
            if path.is_file():
                log.warning("cached dataset %s does not match its seal (cut or changed); rebuilding", path)
            log.info("building the default %s dataset into %s (once)", task, path)
            build_dataset(cfg, path)
            write_seal(path)
    return path
