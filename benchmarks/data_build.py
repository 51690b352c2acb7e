"""Build both default datasets (standard library, MiniLM neighbours, no paraphrasing) and print
per-step timings. Target: under 10 minutes in all on a 2-core CPU machine.

    python benchmarks/data_build.py [--limit N] [--embedder minilm|bm25] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from clmedit.data.build import BuildConfig, build_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="edit cases per task (default: all)")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument(
        "--out", type=Path, default=None, help="where the JSONL files go (default: a temp dir)"
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="clmedit-data-bench-"))
    total, cpu = time.perf_counter(), time.process_time()
    for task in ("cnle", "csne"):
        start = time.perf_counter()
        cfg = BuildConfig(task=task, limit=args.limit, embedder=args.embedder, progress=False)
        result = build_dataset(cfg, out / f"{task}.jsonl")
        print(f"\n{task}: {len(result.cases)} cases, pool {result.stats['counts']['pool']}, "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        for step, seconds in result.stats["timings"].items():
            cpu = result.stats["cpu_seconds"][step]
            print(f"  {step:<14} {seconds:8.1f} s wall {cpu:8.1f} s CPU")
    print(
        f"\nboth datasets in {time.perf_counter() - total:.1f} s wall, {time.process_time() - cpu:.1f} s CPU -> {out}"
    )


if __name__ == "__main__":
    main()
