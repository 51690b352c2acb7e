"""Evaluation speed: the fast path vs the reference (E1), and one decode step vs its floor (E2).

    python benchmarks/eval_speed.py [--cases 2] [--editors none,ft,grace] [--tasks cnle,csne]
                                    [--no-fluency] [--threads N] [--steps 32]

Per task and editor: each case is edited, then scored with `evaluate_case(evaluation="reference")`
and `evaluation="fast"`, interleaved (the order alternates) so machine load affects both alike;
prints the per-case seconds, the fast / reference ratio of wall and of CPU seconds (E1 target:
<= 0.25; CPU seconds are the steadier on a loaded machine) and the agreement
count (cases whose outputs are all identical / cases). Then one greedy decode step of the fast
loop at batch 1 (ms), the weight-read floor (one pass summing every parameter, ms) and their
ratio (E2 target: <= 1.5), measured in this process.
"""

from __future__ import annotations

import argparse
import time

import torch

from clmedit.data.schema import read_cases
from clmedit.eval.decode import decode, prefill
from clmedit.eval.generate import _generation_config
from clmedit.eval.protocol import evaluate_case
from clmedit.models.load import load_model
from clmedit.run.prepare import ensure_base_answers, resolve_data
from clmedit.run.setup import make_editor


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall s, this process's CPU s, result): CPU seconds are less disturbed by other jobs' load."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def score_both(model, tok, case, fluency: bool, fast_first: bool) -> tuple[float, float, float, float, bool]:
    """(reference wall s, fast wall s, reference CPU s, fast CPU s, identical outputs) for one case."""
    runs = {}
    for mode in ("fast", "reference") if fast_first else ("reference", "fast"):
        runs[mode] = timed(evaluate_case, model, tok, case, fluency=fluency, seed=0, evaluation=mode)
    (ref_s, ref_cpu, ref), (fast_s, fast_cpu, fast) = runs["reference"], runs["fast"]
    return ref_s, fast_s, ref_cpu, fast_cpu, ref.outputs == fast.outputs


def editor_rows(model, tok, name: str, cases, fluency: bool) -> list[tuple[float, float, float, float, bool]]:
    editor = make_editor(name, "smollm2-135m") if name != "none" else None
    rows = []
    for i, case in enumerate(cases):
        result = editor.apply(model, tok, [case]) if editor else None
        try:
            rows.append(score_both(model, tok, case, fluency, fast_first=bool(i % 2)))
        finally:
            if result is not None:
                result.restore()
    return rows


def floor_ms(model, repeats: int = 5) -> float:
    """One read of every parameter (a sum), the least a decode step must do; best of `repeats`."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            total = sum(float(p.sum()) for p in model.parameters())
            best = min(best, time.perf_counter() - start)
    assert total == total  # keeps the sums from being skipped
    return 1e3 * best


def step_ms(model, tok, prompt: str, steps: int, repeats: int = 3) -> float:
    """One greedy decode step of the fast loop at batch 1: (t(steps) - t(1)) / (steps - 1), best of `repeats`."""
    eos = set()  # no early stop: every step is decoded

    def run(n: int) -> float:
        start = prefill(model, tok, [prompt])
        t0 = time.perf_counter()
        decode(model, start, _generation_config(model, tok, n, False, None), eos)
        return time.perf_counter() - t0

    run(2)
    long = min(run(steps) for _ in range(repeats))
    short = min(run(1) for _ in range(repeats))
    return 1e3 * (long - short) / (steps - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="cnle,csne")
    ap.add_argument("--editors", default="none,ft,grace", help="comma-separated; 'none' = unedited")
    ap.add_argument("--cases", type=int, default=2, help="cases per task")
    ap.add_argument("--no-fluency", dest="fluency", action="store_false")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed for E2")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_model(args.model)
    print(f"model {args.model}, threads {torch.get_num_threads()}, fluency {args.fluency}")
    print(f"{'task':<5} {'editor':<8} {'ref s/case':>10} {'fast s/case':>11} {'ratio':>6} {'cpu ratio':>9} {'agree':>6}")
    totals, agree, total = [0.0] * 4, 0, 0
    first_prompt = None
    for task in args.tasks.split(","):
        cases = read_cases(resolve_data(f"default:{task}"))[: args.cases]
        ensure_base_answers(model, tok, cases)
        first_prompt = first_prompt or cases[0].prompt
        evaluate_case(model, tok, cases[0], fluency=False)  # warm-up
        for name in args.editors.split(","):
            rows = editor_rows(model, tok, name, cases, args.fluency)
            sums = [sum(r[k] for r in rows) for k in range(4)]
            same = sum(r[4] for r in rows)
            ref, fast = sums[0] / len(rows), sums[1] / len(rows)
            print(f"{task:<5} {name:<8} {ref:>10.2f} {fast:>11.2f} {fast / ref:>6.2f} {sums[3] / sums[2]:>9.2f} "
                  f"{same:>3}/{len(rows)}")  # fmt: skip
            totals = [t + s for t, s in zip(totals, sums)]
            agree, total = agree + same, total + len(rows)
    print(f"E1: evaluation fast / reference = {totals[1] / totals[0]:.2f} wall, {totals[3] / totals[2]:.2f} CPU "
          f"(target <= 0.25); identical outputs {agree}/{total}")  # fmt: skip
    step, floor = step_ms(model, tok, first_prompt, args.steps), floor_ms(model)
    print(f"E2: decode step {step:.1f} ms, weight-read floor {floor:.1f} ms, ratio {step / floor:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
