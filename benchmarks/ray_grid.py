"""Wall time of one grid of runs: the plain local loop, then Ray with 1 and with 2 workers (1 thread each).

    python benchmarks/ray_grid.py [--model smollm2-135m] [--data default:cnle] [--editors none,ft,grace,rome]
                                  [--cases 8] [--out DIR]

The grid is one run per editor (fluency off, the model's presets) on the first `--cases` cases.
Before timing, a throwaway run fills the neighbour-answer cache and a local Ray cluster (2 CPUs,
no dashboard) is started, so every variant starts from the same warm caches; each variant writes
fresh run folders and its timing includes loading the model (Ray: in each worker). Prints the
seconds of each and the ratios (targets: 2 workers >= 1.7x faster than 1; Ray with 1 worker
<= 1.1x the local loop), and checks that every variant recorded the same scores.

It also times the machine's own ceiling for two workers without Ray: two plain processes started at
once, each loading the model and running every run's half of the cases (`shard` 0/2 and 1/2), the
split Ray's two workers get. What two processes cannot gain on the machine (memory bandwidth, shared
caches), Ray cannot either.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _plain_half(configs: list, shard: str) -> None:
    """One plain process of the ceiling: load the model once and run `shard` of every config."""
    import torch

    from clmedit.grid.cell import run
    from clmedit.run.setup import load_model_for

    torch.set_num_threads(1)
    model, tok = load_model_for(configs[0].model, "cpu")
    for config in configs:
        run(config.model_copy(update={"shard": shard}), model, tok)


def _two_plain_processes(configs: list) -> float:
    """Seconds until both halves are done (processes spawned fresh, like Ray's workers)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_plain_half, args=(configs, f"{i}/2")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit("a plain process of the ceiling failed")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="default:cnle")
    ap.add_argument("--editors", default="none,ft,grace,rome")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="where the run folders go (default: a temp dir)")
    args = ap.parse_args()
    import ray
    import torch

    from clmedit.grid.cell import run
    from clmedit.grid.distributed import Cluster, run_grid
    from clmedit.results import read_records
    from clmedit.run.settings import RunConfig
    from clmedit.run.setup import load_model_for

    torch.set_num_threads(1)  # the local loop gets what one worker gets
    root = args.out or Path(tempfile.mkdtemp(prefix="ray_grid_"))
    editors = [e.strip() for e in args.editors.split(",") if e.strip()]

    def grid(name: str) -> list[RunConfig]:
        return [RunConfig(model=args.model, editor=e, data=args.data, out=root / name / e, limit=args.cases,
                          fluency=False, device="cpu") for e in editors]  # fmt: skip

    run(RunConfig(model=args.model, data=args.data, out=root / "warm-up", limit=args.cases, fluency=False,
                  device="cpu"))  # fmt: skip
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t0

    seconds = {}
    t0 = time.perf_counter()
    model, tok = load_model_for(args.model, "cpu")
    for config in grid("local"):
        run(config, model, tok)
    seconds["local"] = time.perf_counter() - t0
    del model, tok
    for workers in (1, 2):
        t0 = time.perf_counter()
        failed = run_grid(grid(f"ray{workers}"), Cluster(workers=workers, threads=1), progress=False)
        seconds[f"ray{workers}"] = time.perf_counter() - t0
        assert failed == [None] * len(editors), failed
    ray.shutdown()
    seconds["plain2"] = _two_plain_processes(grid("plain2"))

    def scores(name: str) -> list:
        return [sorted((r.case_id, r.model_dump_json(include={"scores"})) for r in read_records(root / name / e)) for e in editors]

    same = scores("local") == scores("ray1") == scores("ray2") == scores("plain2")
    print(f"grid: {len(editors)} runs ({','.join(editors)}) x {args.cases} cases of {args.data} on {args.model}, "
          f"1 thread per process; ray.init {init:.1f} s (not counted); run folders in {root}")  # fmt: skip
    print(f"local loop {seconds['local']:.1f} s, Ray 1 worker {seconds['ray1']:.1f} s, "
          f"Ray 2 workers {seconds['ray2']:.1f} s, two plain processes {seconds['plain2']:.1f} s; "
          f"same scores in all four: {same}")  # fmt: skip
    print(f"speed-up 2 workers vs 1: {seconds['ray1'] / seconds['ray2']:.2f}x (target >= 1.7)")
    print(
        f"the machine's ceiling, two plain processes vs the local loop: "
        f"{seconds['local'] / seconds['plain2']:.2f}x"
    )
    print(f"overhead Ray 1 worker vs local loop: {seconds['ray1'] / seconds['local']:.2f}x (target <= 1.1)")


if __name__ == "__main__":
    main()
