"""The same grid on a Ray cluster (optional extra `ray`): one actor per worker keeps its model loaded.

A grid is a list of RunConfigs (a study's cells, or any `clmedit run` configurations). Each run
becomes work items of two kinds, both carried out by the runner's own code:

- train(run, k): fold k's trained part (A-GRACE encoder, MALMEN hypernetwork) fitted once into
  `<run>/fold<k>`, as the runner fits it before fold k's first case; the run's shards wait for it;
- shard(run, i/n): `grid.cell.run` on every n-th case. It loads `fold<k>` (its training finished
  first); MEMIT/PMET statistics and neighbour answers come from the locked disk cache.

So every case's record is the one a single machine writes (the runner seeds each apply and
evaluation and restores the model bitwise), a rerun resumes case by case, and when a run's shards
are done the driver writes its one summary over all of them, as `clmedit run` writes it.

Faults: Ray restarts a dead worker (kill -9, a lost node) and retries the item it was running;
the runner skips the cases already recorded, so a death costs only the unfinished cases.
Storage: every node must see the run folders at the same path (NFS or similar); the driver passes
its $CLMEDIT_CACHE (MEMIT/PMET statistics, neighbour answers) to the workers, so share that too,
or each node fills its own. Ray is imported only here, and only when a grid runs.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clmedit.errors import InputError
from clmedit.grid.cell import run
from clmedit.run import records
from clmedit.run.folds import fit_fold, scored_cases, split_folds, training_half, unprobed_for
from clmedit.run.settings import RunConfig
from clmedit.run.setup import claim_run, load_model_for, ready, setup_run, usable_cases
from clmedit.run.summary import write_run_summary

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often the driver refreshes the progress bar while work runs


@dataclass(frozen=True)
class Cluster:
    """Where a grid runs and how wide; checked on construction."""

    # 'local': a new cluster on this machine; 'auto': the one this node belongs to; 'ray://HOST:PORT'
    address: str = "local"
    workers: int = 1  # Ray actors, each holding one model for the items it is given
    gpus_per_worker: float = 0.0  # GPUs each worker reserves; a fraction packs small models on one GPU
    threads: int = 1  # CPUs (torch threads) each worker reserves
    shards: int | None = None  # shards per run (None: one per worker); batched or sequential runs: 1
    retries: int = 3  # restarts of a dead worker, and retries of the item it was running

    def __post_init__(self) -> None:
        _ray()  # installed? (one clear line if not)
        if not re.fullmatch(r"local|auto|ray://[^\s/:]+:\d+|[^\s/:]+:\d+", self.address):
            raise InputError(f"--ray {self.address!r}: use local, auto, ray://HOST:PORT or HOST:PORT")
        if self.workers < 1 or self.threads < 1 or (self.shards is not None and self.shards < 1):
            raise InputError("--workers, --threads and shards must be at least 1")
        if self.gpus_per_worker < 0 or self.retries < 0:
            raise InputError("--gpus-per-worker and retries must not be negative")


def _ray():
    """The `ray` module, or one line saying how to install it (checked before any work)."""
    try:
        import ray
    except ImportError:
        raise InputError(
            "--ray needs Ray: pip install 'clmedit[ray]' (or run shards by hand with --shard i/n)"
        ) from None
    return ray


class GridWorker:
    """One Ray actor per worker: keeps the last model it loaded and runs train and shard items with it."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._key: tuple | None = None
        self._lm: tuple | None = None

    def _model(self, config: RunConfig) -> tuple:
        key = (config.model, config.device, config.dtype)
        if key != self._key:
            self._lm = self._key = None  # free the old model before the next one loads
            self._lm, self._key = load_model_for(*key), key
        return self._lm

    def _with_model(self, work, config: RunConfig, *args: Any) -> None:
        model, tok = self._model(config)
        try:
            work(config, *args, model=model, tok=tok)
        except BaseException:
            self._key = None  # the model may not be the unedited one any more: reload it next time
            raise

    def shard(self, config: RunConfig) -> None:
        self._with_model(run, config)

    def train(self, config: RunConfig, fold: int) -> None:
        self._with_model(fit_run_fold, config, fold)


def fit_run_fold(config: RunConfig, fold: int, model, tok) -> None:
    """Fit fold `fold`'s trained part into `<run>/fold<fold>` as the runner does before that fold's
    first case: on the other folds' cases, after the neighbour answers of the cases still to do and
    `editor.prepare`. A folder holding it already (DONE) is left as it is."""
    setup = setup_run(config)
    done = records.done_ids(setup.out)
    todo = [c for c in scored_cases(setup.cases, config) if c.case_id not in done]
    ready(config, setup.editor, model, tok, usable_cases(todo, model, tok, config.fluency)[0])
    parts = split_folds(setup.cases, config.folds, config.seed)
    train, _ = training_half(parts, fold, config.folds_overlap)  # probe-disjoint, as the runner's
    fit_fold(
        setup.editor, model, tok, train, setup.out / f"fold{fold}", unprobed_for(setup.data, parts[fold])
    )


@dataclass
class _Item:
    run: int  # index of its config in the grid
    kind: str  # 'train' or 'shard'
    arg: Any  # the fold (train) or the RunConfig with its shard (shard)


def _plan(configs: list[RunConfig], cluster: Cluster, failed: list[str | None]) -> tuple[list[_Item], int]:
    """The grid's work items (train items first) and how many cases they score; a run whose folder
    or settings are wrong fails here, before any worker starts."""
    trains, shards, total = [], [], 0
    for r, config in enumerate(configs):
        try:
            setup = setup_run(config)
            if config.sequential is None:
                claim_run(config, setup)
        except Exception as err:  # one broken run must not cost the rest of the grid
            failed[r] = f"{type(err).__name__}: {err}"
            continue
        if config.sequential is not None or config.batch_size > 1:  # their cases depend on each other
            shards.append(_Item(r, "shard", config))
            continue
        done = records.done_ids(setup.out)
        todo = {c.case_id for c in scored_cases(setup.cases, config) if c.case_id not in done}
        if not todo:
            continue
        total += len(todo)
        if setup.editor.trainable:
            for k, part in enumerate(split_folds(setup.cases, config.folds, config.seed)):
                if any(c.case_id in todo for c in part) and not (setup.out / f"fold{k}" / "DONE").is_file():
                    trains.append(_Item(r, "train", k))
        n = min(cluster.shards or cluster.workers, len(todo))
        shards += [_Item(r, "shard", config.model_copy(update={"shard": f"{i}/{n}"})) for i in range(n)]
    return trains + shards, total


class _Tail:
    """Counts the case records appended to the runs' `cases*.jsonl` files since it was made."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.seen = {p: p.stat().st_size for d in dirs for p in d.glob("cases*.jsonl")}

    def new_records(self) -> int:
        n = 0
        for p in (p for d in self.dirs for p in d.glob("cases*.jsonl")):
            start = self.seen.get(p, 0)
            with open(p, "rb") as fh:
                fh.seek(start)
                chunk = fh.read()
            self.seen[p] = start + len(chunk)
            n += chunk.count(b"\n")
        return n


def _reason(ray, err: Exception) -> str:
    """One line: why an item failed (the worker's exception, or the worker's death past its retries)."""
    if isinstance(err, ray.exceptions.RayActorError):
        return f"its worker died and was not restarted: {err}".split("\n")[0]
    cause = getattr(err, "cause", None) or err
    return f"{type(cause).__name__}: {cause}".split("\n")[0]


def _connect(ray, cluster: Cluster) -> bool:
    """Initialise Ray unless it already is; True when this call started it (then it also shuts it down)."""
    if ray.is_initialized():
        return False
    local = {"include_dashboard": False} if cluster.address == "local" else {}
    # Workers' own progress bars would garble the driver's; their logs stay in Ray's session folder.
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING, **local)
    return True


def _worker(ray, cluster: Cluster):
    """A new GridWorker actor: restarted when it dies, retrying the item it was running."""
    env = {k: os.environ[k] for k in ("CLMEDIT_CACHE",) if k in os.environ}
    return (
        ray.remote(GridWorker)
        .options(
            num_cpus=cluster.threads,
            num_gpus=cluster.gpus_per_worker,
            max_restarts=cluster.retries,
            max_task_retries=cluster.retries,
            runtime_env={"env_vars": env} if env else None,
        )
        .remote(cluster.threads)
    )


def _execute(ray, configs, cluster: Cluster, items: list[_Item], total: int, failed: list[str | None],
             progress: bool) -> None:  # fmt: skip
    """Hand the items to the workers as they free up (a run's shards after its training); record failures."""
    workers = [_worker(ray, cluster) for _ in range(cluster.workers)]
    idle, running, waiting = list(range(len(workers))), {}, list(range(len(items)))
    left = {r: sum(it.run == r for it in items) for r in {it.run for it in items}}  # items per run to go
    training = {r: sum(it.run == r and it.kind == "train" for it in items) for r in left}
    tail = _Tail(sorted({Path(configs[r].out) for r in left}))
    bar = tqdm(total=total, unit="case", desc=f"grid on Ray, workers: {cluster.workers}", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    runs_done = 0
    while waiting or running:
        for j in list(waiting):
            it = items[j]
            if failed[it.run] is not None:  # its training failed: its shards cannot run
                waiting.remove(j)
                left[it.run] -= 1
                runs_done += not left[it.run]
            elif idle and (it.kind == "train" or not training[it.run]):
                w = idle.pop(0)
                call = workers[w].train.remote(configs[it.run], it.arg) if it.kind == "train" else \
                    workers[w].shard.remote(it.arg)  # fmt: skip
                running[call] = (w, j)
                waiting.remove(j)
        if not running:
            break
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
        for call in ready:
            w, j = running.pop(call)
            it = items[j]
            idle.append(w)
            try:
                ray.get(call)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as err:
                failed[it.run] = failed[it.run] or _reason(ray, err)
                log.error("%s: %s FAILED: %s", configs[it.run].out, it.kind, failed[it.run])
                if isinstance(err, ray.exceptions.RayActorError):  # past its restarts: a fresh one
                    workers[w] = _worker(ray, cluster)
            training[it.run] -= it.kind == "train"
            left[it.run] -= 1
            if not left[it.run]:
                runs_done += 1
                log.info("run %d/%d done: %s%s", runs_done, len(left), configs[it.run].out,
                         " (FAILED)" if failed[it.run] else "")  # fmt: skip
        bar.update(min(tail.new_records(), bar.total - bar.n))
        bar.set_postfix_str(f"runs {runs_done}/{len(left)}")
    bar.close()
    for w in workers:
        ray.kill(w)


def _placed(config: RunConfig) -> RunConfig:
    """`config` unsharded, its local paths absolute: a worker's working directory is not the driver's."""
    update: dict[str, Any] = {"shard": "0/1", "out": Path(config.out).resolve()}
    for field in ("data", "model"):
        if Path(getattr(config, field)).exists():
            update[field] = str(Path(getattr(config, field)).resolve())
    return config.model_copy(update=update)


def run_grid(
    configs: list[RunConfig], cluster: Cluster = Cluster(), progress: bool = True
) -> list[str | None]:
    """Run every config on `cluster` (resuming each); per config, None when it finished, else why not.

    A config's own `shard` is ignored (the cluster shards the run), and its local paths are made
    absolute. Every run that finished has its `summary.json` over all its cases, as a single-machine
    `run` writes it.
    """
    ray = _ray()
    configs = [_placed(c) for c in configs]
    failed: list[str | None] = [None] * len(configs)
    items, total = _plan(configs, cluster, failed)
    started = _connect(ray, cluster) if items else False
    try:
        if items:
            _execute(ray, configs, cluster, items, total, failed, progress)
    finally:
        if started:
            ray.shutdown()
    for r, config in enumerate(configs):
        if failed[r] is None and config.sequential is None:  # one summary over every shard
            write_run_summary(config, setup_run(config))
    return failed
