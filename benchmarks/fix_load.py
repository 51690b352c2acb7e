"""A fix file of many fixes on smollm2-135m: load seconds, adding fixes to it, token agreement.

    OMP_NUM_THREADS=1 python benchmarks/fix_load.py [--fixes 100] [--add 10] [--editor grace]
                                                    [--data CASES] [--check 100] [--hp k=v] [--out DIR]

Makes N fixes (`--data` cases; else CoNaLa pairs when ../shared/data holds them, else the default
CNLE cases) with the editor's smollm2-135m preset in one apply call (minutes on a CPU), saves the fix
file, loads a fresh copy of the base model and times `load_artifact` alone (the fix file is read,
checked and rebuilt; nothing is trained). With --add K it then adds K more fixes to the saved file
the way `clmedit apply --load FILE --fixes MORE --out NEW` does (`extend_fix_file`: load the edit,
apply the K new fixes, save both), times that whole call and its apply, and times loading the
N+K file. Then the in-memory edited model and the loaded one greedily decode `--check` fix
prompts for len(target) tokens: agreement = share of prompts whose token ids are identical;
effectiveness = share whose tokens are the target's. Targets (issue 26): loading under 1 s per
1,000 fixes; adding to a large file costs the load plus the new fixes' apply, not a re-apply.
`--hp n_iter=1` builds a large GRACE file fast for a size test (its values then barely trained: the
effectiveness printed says so).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from cases import benchmark_cases

from clmedit.cli_common import parse_hp
from clmedit.data.schema import write_cases
from clmedit.editors.base import get_editor
from clmedit.fixes.apply import extend_fix_file
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


def timed_load(folder: Path) -> tuple[float, object, object]:
    """Seconds of `load_artifact` of `folder` into a fresh base model, and that (model, tok)."""
    fresh, tok = load_model(MODEL, device="cpu")
    start = time.perf_counter()
    load_artifact(fresh, tok, folder)
    return time.perf_counter() - start, fresh, tok


def mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixes", type=int, default=100)
    ap.add_argument("--add", type=int, default=0, help="fixes then added to the saved file")
    ap.add_argument("--editor", default="grace")
    ap.add_argument("--data", default=None, help="case file or default:cnle (default: CoNaLa pairs)")
    ap.add_argument("--check", type=int, default=100, help="fix prompts decoded for the agreement check")
    ap.add_argument("--hp", action="append", default=[], help="editor hparam key=value (repeatable)")
    ap.add_argument("--out", default=None, help="where the fix files go (default: a temporary folder)")
    args = ap.parse_args()
    cases = benchmark_cases(args.fixes + args.add, args.data)
    if len(cases) < args.fixes + args.add:
        raise SystemExit(f"only {len(cases)} cases; give --data with at least {args.fixes + args.add}")
    first, more = cases[: args.fixes], cases[args.fixes :]
    root = Path(args.out or tempfile.mkdtemp(prefix="fix-load-"))
    model, tok = load_model(MODEL, device="cpu")
    start = time.perf_counter()
    editor = get_editor(args.editor, preset=MODEL, **parse_hp(args.hp))
    save_artifact(model, tok, editor, first, root / "fix", MODEL)
    made = time.perf_counter() - start
    seconds, fresh, tok2 = timed_load(root / "fix")
    print(f"{args.editor} ({' '.join(args.hp) or 'preset'}), {len(first)} fixes on {MODEL}: made and saved in {made:.1f} s "
          f"({mib(root / 'fix'):.1f} MiB in {root / 'fix'})")  # fmt: skip
    print(f"load_artifact: {seconds:.3f} s = {seconds / len(first) * 1000:.3f} s per 1,000 fixes (target < 1)")
    check = first[: args.check]
    if more:
        write_cases(root / "more.jsonl", more)
        start = time.perf_counter()
        model, tok, _, _ = extend_fix_file(root / "fix", root / "more.jsonl", root / "fix+more", MODEL)
        added = time.perf_counter() - start
        applied = json.loads((root / "fix+more" / "manifest.json").read_text())["apply_seconds"]
        print(f"adding {len(more)} fixes to the {len(first)}-fix file: {added:.1f} s in all (model load, "
              f"edit load, apply {applied:.1f} s, save); made in one go it took {made:.1f} s")  # fmt: skip
        seconds, fresh, tok2 = timed_load(root / "fix+more")
        n = len(cases)
        print(f"load_artifact of the {n}-fix file: {seconds:.3f} s = {seconds / n * 1000:.3f} s per 1,000 fixes")
        check = first[: max(1, args.check - len(more))] + more[: args.check]  # the extended model vs its file
    agree = hits = 0
    for case in check:
        want = target_ids(tok, case.prompt, case.target)
        edited = greedy(model, tok, case.prompt, len(want))
        agree += edited == greedy(fresh, tok2, case.prompt, len(want))
        hits += edited == want
    print(f"token agreement, loaded vs in-memory edited: {agree}/{len(check)} = {agree / len(check):.3f}")
    print(f"effectiveness (target tokens exactly): {hits}/{len(check)}")


if __name__ == "__main__":
    main()
