"""The same grid on a Ray cluster: every (run config, shard) is one Ray task (optional extra `ray`).

Each task calls `runner.run` on its shard, so everything the runner guarantees holds per shard:
shards write separate `cases.<i>of<n>.jsonl` files in the shared run directory, reruns resume,
and the last shard to finish of a run writes the summary over all shards (rewritten at the end here).
The run directory must be on storage that every node sees.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clmedit.run.runner import RunConfig, run, write_summary

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "clmedit's distributed runner needs Ray: pip install 'clmedit[ray]' (or run shards by hand "
            "with `clmedit run --shard i/n` on each machine)"
        ) from err
    return ray


def run_grid(
    configs: list[RunConfig], shards: int = 1, num_gpus: float = 0.0, address: str | None = None
) -> list[Path]:
    """Run every config split into `shards` Ray tasks; returns the run directories (summaries merged).

    `address`: an existing cluster ('auto', 'ray://host:port'); None starts a local one.
    `num_gpus`: GPUs per task (e.g. 1 for 7B models; fractions pack small models on one GPU).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True)

    @ray.remote(num_gpus=num_gpus)
    def _task(config_json: str) -> str:
        return str(run(RunConfig.model_validate_json(config_json)))

    futures = [
        _task.remote(c.model_copy(update={"shard": f"{i}/{shards}"}).model_dump_json())
        for c in configs
        for i in range(shards)
    ]
    log.info("submitted %d Ray tasks (%d runs x %d shards)", len(futures), len(configs), shards)
    ray.get(futures)
    for c in configs:  # every shard has finished: one summary over all of them
        write_summary(Path(c.out), c.model_copy(update={"shard": "0/1"}))
    return [Path(c.out) for c in configs]
