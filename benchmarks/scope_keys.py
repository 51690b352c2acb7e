"""SCOPE and its ablations at the key level: what each component does to matching, without generating.

    python benchmarks/scope_keys.py --data default:csne --variants scope,no-hard,no-augment,no-bank,no-rewrites \
        [--eval-limit 150] [--threads 1] [--out results/scope_keys.json]

For each variant, under the 2-fold protocol of `clmedit run --folds 2` (same folds, same first
`--eval-limit` cases of each fold), SCOPE is fitted on the other fold and every scored case's
prompt, rephrase and neighbours are keyed as the codebook would key them. It prints, x100:

    inside    rephrases within their own entry's radius, or a rewrite key's (an upper bound of
              generalization EM: a matched rephrase still needs the value to carry over)
    kept      cases whose five neighbours all fall outside the entry and its rewrite keys' balls
              (exactly specificity EM: an unmatched input's output is bitwise the unedited model's)
    ceiling   cases whose rephrase is nearer the prompt's key than every neighbour: the most one
              ball per entry can give both to (the limit of the key space itself)

`--trained RUN` loads each fold's fitted part from a run folder (`RUN/fold<k>`, as `clmedit run --folds 2`
saved it) instead of fitting, and scores only the folds that have one; `--editor agrace` keys A-GRACE
(one radius) the same way.

Fitting dominates the cost (about 5-15 min per fold on one CPU core with the preset's 4 initial
scales x 3 selection seeds; `--hp enc_selection_seeds=1 --hp "enc_init_pos_fractions=[0.5]"` gives
every variant the same smaller budget).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

VARIANTS = {
    "scope": {},
    "no-hard": {"hard_negatives": 0},
    "no-augment": {"augment": False},
    "no-bank": {"use_bank": False},
    "no-rewrites": {"edit_rewrites": 0},
    "mean-only": {"key_pool": "mean"},
    "grace-radius": {"use_bank": False, "fixed_radius": 1.0},
    "leaky-validation": {"honest_validation": False},
    "unprobed": {"unprobed_limit": 3000},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="default:cnle")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--variants", default="scope,no-hard,no-augment,no-bank")
    ap.add_argument("--eval-limit", type=int, default=150)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--editor", default="scope", help="scope, or agrace (then only the variant 'scope': its defaults)")
    ap.add_argument("--trained", type=Path, default=None, help="run folder whose fold<k>/ parts to load")
    ap.add_argument("--folds-overlap", action="store_true", help="fit on the plain split (test probes included)")
    ap.add_argument("--hp", action="append", default=[],
                    help="key=value for every variant, e.g. a smaller training budget shared by all")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clmedit.cli_common import parse_hp
    from clmedit.data.schema import read_cases
    from clmedit.editors.base import get_editor
    from clmedit.models.load import load_model
    from clmedit.run.folds import scored_cases, split_folds, training_half, unprobed_for
    from clmedit.run.prepare import resolve_data
    from clmedit.run.settings import RunConfig

    data = resolve_data(args.data)
    cases = read_cases(data)[: args.limit]
    config = RunConfig(data=args.data, out=".", folds=2, eval_limit=args.eval_limit)
    scored = {c.case_id for c in scored_cases(cases, config)}
    folds = split_folds(cases, 2, config.seed)
    model, tok = load_model(args.model, device="cpu")
    shared = parse_hp(args.hp)
    rows = {}
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        hits = {"inside": 0, "kept": 0, "ceiling": 0, "n": 0}
        for k, fold in enumerate(folds):
            editor = get_editor(args.editor, preset=args.model, **{**shared, **VARIANTS[name]})
            if args.trained is not None:
                if not (args.trained / f"fold{k}" / "DONE").is_file():
                    continue
                editor.load(args.trained / f"fold{k}")
            else:
                train = training_half(folds, k, args.folds_overlap)[0]  # probe-disjoint by default
                editor.fit(model, tok, train, unprobed=unprobed_for(data, fold))
            before = dict(hits)
            for case in (c for c in fold if c.case_id in scored):
                d = editor.key_record(model, tok, case)["distances"]
                nearest = min(d["neighbours"], default=float("inf"))
                balls = [d, *d.get("rewrites", [])]  # the prompt's key and its rewrites' keys (CSNE)
                hits["inside"] += any(b["rephrase"] <= b["radius"] for b in balls)
                hits["kept"] += all(min(b["neighbours"], default=float("inf")) > b["radius"] for b in balls)
                hits["ceiling"] += d["rephrase"] < nearest
                hits["n"] += 1
            n = hits["n"] - before["n"]
            print(f"  fold {k}: " + "  ".join(f"{m} {100 * (hits[m] - before[m]) / max(n, 1):5.1f}"
                                            for m in ("inside", "kept", "ceiling")) + f"  ({n} cases)", flush=True)  # fmt: skip
        rows[name] = {k: round(100 * v / hits["n"], 1) for k, v in hits.items() if k != "n"}
        rows[name].update(cases=hits["n"], minutes=round((time.perf_counter() - t0) / 60, 1))
        print(f"{name:13s} inside {rows[name]['inside']:5.1f}  kept {rows[name]['kept']:5.1f}  "
              f"ceiling {rows[name]['ceiling']:5.1f}  ({hits['n']} cases, {rows[name]['minutes']} min)", flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"data": args.data, "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
