"""Loading a fix file of many GRACE fixes on smollm2-135m: seconds of `load_artifact`, token agreement.

    OMP_NUM_THREADS=1 python benchmarks/fix_load.py [--fixes 100] [--editor grace] [--out DIR]

Makes N fixes (CoNaLa pairs when ../shared/data holds them, else the default CNLE cases) with the
editor's smollm2-135m preset in one apply call (minutes on a CPU), saves the fix file, loads a
fresh copy of the base model and times `load_artifact` alone (the fix file is read, checked and
rebuilt; nothing is trained). Then both the in-memory edited model and the loaded one greedily
decode every fix prompt for len(target) tokens: agreement = share of prompts whose token ids are
identical; effectiveness = share whose tokens are the target's. Target: load < 2 s, agreement 1.0.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from cases import benchmark_cases

from clmedit.editors.base import get_editor
from clmedit.fixes.artifact import load_artifact, save_artifact
from clmedit.models.load import load_model
from clmedit.models.text import prompt_ids, target_ids

MODEL = "smollm2-135m"


@torch.no_grad()
def greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([prompt_ids(tok, prompt)])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
    )
    return out[0, ids.shape[1] :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixes", type=int, default=100)
    ap.add_argument("--editor", default="grace")
    ap.add_argument("--out", default=None, help="where the fix file goes (default: a temporary folder)")
    args = ap.parse_args()
    cases = benchmark_cases(args.fixes)
    out = Path(args.out or tempfile.mkdtemp(prefix="fix-load-"))
    model, tok = load_model(MODEL, device="cpu")
    start = time.perf_counter()
    save_artifact(model, tok, get_editor(args.editor, preset=MODEL), cases, out, MODEL)
    made = time.perf_counter() - start
    fresh, tok2 = load_model(MODEL, device="cpu")
    start = time.perf_counter()
    load_artifact(fresh, tok2, out)
    seconds = time.perf_counter() - start
    agree = hits = 0
    for case in cases:
        want = target_ids(tok, case.prompt, case.target)
        edited = greedy(model, tok, case.prompt, len(want))
        agree += edited == greedy(fresh, tok2, case.prompt, len(want))
        hits += edited == want
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(
        f"{args.editor}, {len(cases)} fixes on {MODEL}: made and saved in {made:.1f} s ({size:.1f} MiB in {out})"
    )
    print(f"load_artifact: {seconds:.3f} s (target < 2 s)")
    print(f"token agreement, loaded vs in-memory edited: {agree}/{len(cases)} = {agree / len(cases):.3f}")
    print(f"effectiveness (target tokens exactly): {hits}/{len(cases)}")


if __name__ == "__main__":
    main()
