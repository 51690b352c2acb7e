"""Why a ROME edit does not take on smollm2-135m: does the value reach the target, and where does the
rank-one update act?

    OMP_NUM_THREADS=1 python benchmarks/rome_reach.py [--cases 2] [--data default:cnle] [--hp k=v ...]

For each of the first N cases, edited alone (the smollm2-135m preset, restored after): the value's
six-text NLL (what ROME's value optimisation reached), the target tokens that are the teacher-forced
argmax after the bare prompt before and after the edit, and the greedy continuation after it. Then
where the update dW = r u^T / (k*.u) acts: at every other token of prompt + target its input k_i
is moved by c_i r with c_i = k_i.u / k*.u (c = 1 at the edit token), so the median and largest |c_i|
say whether the edit spills onto the rest of the text (c near 0: it does not).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from clmedit.cli_common import parse_hp
from clmedit.data.schema import read_cases
from clmedit.locate.keys import averaged_keys, compute_keys
from clmedit.models.arch import arch_of
from clmedit.models.load import load_model
from clmedit.models.text import sequence_ids
from clmedit.run.prepare import resolve_data
from clmedit.run.setup import make_editor

MODEL = "smollm2-135m"


@torch.no_grad()
def teacher_forced(model, ids: list[int], split: int) -> tuple[int, torch.Tensor]:
    """(target tokens that are the argmax after their prefix, the logits)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    pred = logits[split - 1 : len(ids) - 1].argmax(-1)
    return int((pred == torch.tensor(ids[split:])).sum()), logits


@torch.no_grad()
def down_proj_inputs(model, ids: list[int], layer: int) -> torch.Tensor:
    """The input of down_proj in `layer` at every position of `ids`: (T, d_mlp)."""
    seen = []
    hook = arch_of(model).down_proj_module(model, layer).register_forward_hook(
        lambda _m, args, _out: seen.append(args[0][0].detach().double())
    )
    try:
        model(input_ids=torch.tensor([ids]))
    finally:
        hook.remove()
    return seen[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--data", default="default:cnle")
    ap.add_argument("--hp", action="append", default=[], help="ROME hparam key=value")
    args = ap.parse_args()
    model, tok = load_model(MODEL, device="cpu")
    rome = make_editor("rome", MODEL, None, parse_hp(args.hp))
    rome.prepare(model, tok)
    layer = rome.edited_layers(model)[0]
    prefixes = rome.prefixes(model, tok)
    print(f"ROME on {MODEL}, layer {layer}, {len(prefixes)} context prefixes: {prefixes}")
    for case in read_cases(resolve_data(args.data))[: args.cases]:
        ids, split = sequence_ids(tok, case.prompt, case.target)
        n = len(ids) - split
        hits_before, _ = teacher_forced(model, ids, split)
        k_star = compute_keys(model, tok, [case.prompt], [layer])[layer][0].double()
        u = averaged_keys(model, tok, [case.prompt], layer, prefixes)[0].double() if prefixes else k_star
        keys = down_proj_inputs(model, ids, layer)
        c = (keys @ u / (k_star @ u)).abs()
        others = torch.cat([c[: split - 1], c[split:]]).tolist()  # every token but the edit token
        result = rome.apply(model, tok, [case])
        try:
            hits_after, _ = teacher_forced(model, ids, split)
            out = model.generate(input_ids=torch.tensor([ids[:split]]), max_new_tokens=n, do_sample=False)
            text = tok.decode(out[0, split:])
        finally:
            result.restore()
        print(f"\n{case.case_id}: target {case.target!r} ({n} tokens)")
        print(f"  value six-text NLL {result.info['value_nll'][0]:.3f} after {result.info['value_steps'][0]} steps")
        print(f"  target tokens that are the teacher-forced argmax: {hits_before}/{n} before, {hits_after}/{n} after")
        print(f"  greedy after the edit: {text!r}")
        print(f"  cos(k*, u) = {float(k_star @ u / (k_star.norm() * u.norm())):.3f}; |c_i| at the other "
              f"{len(others)} tokens: median {statistics.median(others):.3f}, max {max(others):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
