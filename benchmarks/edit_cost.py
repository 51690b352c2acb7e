"""Cost of one edit per editor on smollm2-135m, next to its floor.

    python benchmarks/edit_cost.py [--editors grace,ft] [--cases 5] [--data cases.jsonl]

Per editor: median wall seconds of `Editor.apply` (one case per call), median peak memory, and
for GRACE and FT-L the floor = optimisation steps x one forward+backward of the same sequence
through the layers the gradient must traverse (from the edited layer up, with the same
trainable tensors: a value vector at down_proj for GRACE, the down_proj weight for FT-L),
measured here. Target: apply <= 1.5x floor. Other editors get seconds and memory only.
Cases: --data (our JSONL), else CoNaLa at --conala if present, else the default CNLE dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from cases import CONALA, benchmark_cases

from clmedit.data.schema import EditCase
from clmedit.editors.base import get_editor
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.load import load_model
from clmedit.models.partial import UpperStack, trainable_only
from clmedit.models.text import edit_batch, target_nll


def floor_seconds(model, tok, editor, case: EditCase, repeats: int = 3) -> float | None:
    """steps x median(one forward+backward of the upper stack) for GRACE / FT-L; None otherwise."""
    arch, hp = arch_of(model), editor.hparams
    depth = arch.num_layers(model)
    device = next(model.parameters()).device
    batch = edit_batch(tok, [case.prompt], [case.target], device=device)
    if editor.name == "grace":
        layer, steps = hp.layer_for(hp.layer, depth), hp.n_iter
        d_out = arch.weight_out_in(arch.down_proj_module(model, layer)).shape[0]
        value = torch.zeros(d_out, device=device, requires_grad=True)
        trainable, edit = [], lambda out, inp: out + value
        keep = batch["input_ids"].shape[1] - batch["prompt_lens"][0] + 1
    elif editor.name == "ft":
        layers = hp.layers_for(hp.layers, depth)
        layer, steps = layers[0], hp.num_steps
        trainable, edit, keep = [arch.down_proj_module(model, i).weight for i in layers], None, 0
    else:
        return None
    stack = UpperStack(model, layer, batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"][:, -keep:] if keep else batch["labels"]
    times = []
    hook = Trace(model, arch.path("down_proj", layer), edit_output=edit) if edit else contextlib.nullcontext()
    with trainable_only(model, trainable), hook:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            logits = stack(logits_to_keep=keep)
            target_nll(logits, labels).backward()
            times.append(time.perf_counter() - t0)
    for p in trainable:
        p.grad = None
    return steps * statistics.median(times[1:])  # the first call warms up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--editors", default="grace,ft")
    ap.add_argument("--cases", type=int, default=5)
    ap.add_argument("--data", default=None)
    ap.add_argument("--conala", default=str(CONALA))
    args = ap.parse_args()
    model, tok = load_model(args.model)
    cases = benchmark_cases(args.cases, args.data, args.conala)
    rows = []
    for name in args.editors.split(","):
        editor = get_editor(name, preset=args.model)
        editor.apply(model, tok, cases[:1]).restore()  # warm-up
        secs, peaks, floors = [], [], []
        for case in cases:
            result = editor.apply(model, tok, [case])
            result.restore()
            secs.append(result.seconds)
            peaks.append(result.peak_bytes)
            floors.append(floor_seconds(model, tok, editor, case))
        apply_s = statistics.median(secs)
        floor_s = statistics.median(floors) if None not in floors else None
        rows.append((name, apply_s, statistics.median(peaks) / 2**20, floor_s))
    print(f"\n{args.model}, {len(cases)} cases, device {next(model.parameters()).device}\n")
    print("| editor | apply s (median) | peak MiB | floor s | apply / floor |")
    print("|---|---:|---:|---:|---:|")
    for name, apply_s, peak, floor_s in rows:
        ratio = f"{apply_s / floor_s:.2f}" if floor_s else "-"
        floor = f"{floor_s:.3f}" if floor_s else "-"
        print(f"| {name} | {apply_s:.3f} | {peak:.0f} | {floor} | {ratio} |")


if __name__ == "__main__":
    main()
