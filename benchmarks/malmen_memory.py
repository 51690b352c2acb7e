"""MALMEN meta-training's peak memory for 100 vs 1,000 training cases on a tiny model.

    python benchmarks/malmen_memory.py [--cases 100,1000] [--stores disk,device] [--steps 20] [--family llama]

Each (store, cases) cell runs `Malmen.fit` in a fresh process and reports the peak memory of the
fit (CUDA max_memory_allocated on a GPU; on a CPU the process's peak RSS) and its growth over
the memory in use when the fit started. The cases are 100 real CoNaLa cases (benchmarks/cases.py)
repeated, so that only their number changes, not the longest sequence. The per-case (key, gradient) pairs and hidden states
are what grows with the cases: `store=device` holds them all, `store=disk` (the default) streams
them, so its peak must not grow (target: peak ratio 1,000 / 100 cases <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from cases import benchmark_cases


def _one(n: int, store: str, steps: int, family: str, device: str) -> dict:
    import psutil
    import torch

    from clmedit.editors.malmen.editor import Malmen, MalmenHParams
    from clmedit.models.cost import CostMeter
    from clmedit.models.tiny import tiny_model

    torch.set_num_threads(1)
    base = benchmark_cases(100)  # the same 100 lengths repeated: only the count changes
    cases = [base[i % len(base)].model_copy(update={"case_id": f"c{i}"}) for i in range(n)]
    model, tok = tiny_model(family)
    model.to(device)
    editor = Malmen(MalmenHParams(steps=steps, val_every=steps, store=store))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
    else:
        start = psutil.Process().memory_info().rss
    with CostMeter(device) as meter:
        editor.fit(model, tok, cases)
    return {"cases": n, "store": store, "peak": meter.peak_bytes, "growth": meter.peak_bytes - start,
            "seconds": round(meter.seconds, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="100,1000")
    parser.add_argument("--stores", default="disk,device")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--family", default="llama")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("N", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(int(args.one[0]), args.one[1], args.steps, args.family, args.device)))
        return
    sizes = [int(n) for n in args.cases.split(",")]
    mib = 2**20
    print("| store | cases | peak MiB | growth MiB | fit s |\n|---|---|---|---|---|")
    for store in args.stores.split(","):
        rows = []
        for n in sizes:
            cmd = [sys.executable, __file__, "--one", str(n), store,
                   "--steps", str(args.steps), "--family", args.family, "--device", args.device]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"| {store} | {n} | {row['peak'] / mib:.1f} | {row['growth'] / mib:.1f} | {row['seconds']} |")
        first, last = rows[0], rows[-1]
        print(f"| {store} | ratio {last['cases']}/{first['cases']} | {last['peak'] / first['peak']:.3f} | "
              f"{last['growth'] / max(first['growth'], 1):.2f} | |")  # fmt: skip


if __name__ == "__main__":
    main()
