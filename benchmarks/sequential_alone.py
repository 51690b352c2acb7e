"""What crowding costs a lifelong run: the cases one checkpoint scored, each edited alone instead.

    python benchmarks/sequential_alone.py --run results/sequential/scope [--checkpoint 1000] [--limit K] [--threads 1]

Reads a finished `clmedit run --sequential` folder (for example one `benchmarks/sequential.py` wrote),
takes the cases its checkpoint scored (every edited case, or its --score-sample), and edits each of
them alone on the unedited model with the run's editor, hparams and trained part (`fold0/` of a
`--folds 2` run), scores it as the run does, and restores it. It prints the checkpoint's figures
beside the alone ones, and how many cases went 1 -> 0 and 0 -> 1 per metric: what the other edits in
the model cost each case. Writes `alone-edits-<N>.jsonl` (per case) into the run folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import clmedit  # noqa: F401  (before torch, so that its MKL buffer setting applies: see clmedit/__init__.py)

METRICS = ("effectiveness", "generalization", "specificity")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished sequential run folder")
    ap.add_argument("--checkpoint", type=int, default=None, help="edits at the checkpoint (default: the last)")
    ap.add_argument("--limit", type=int, default=None, help="only the first K scored cases (a quick look)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    from clmedit.data.schema import read_cases
    from clmedit.eval.protocol import evaluate_case
    from clmedit.files import atomic_write_text
    from clmedit.lifelong.checkpoint import read_scored
    from clmedit.run.prepare import ensure_base_answers, resolve_data
    from clmedit.run.setup import load_model_for, make_editor

    if args.threads:
        torch.set_num_threads(args.threads)
    summary_path = args.run / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"{args.run}: no summary.json (not a finished run folder)")
    cfg = json.loads(summary_path.read_text(encoding="utf-8"))["config"]
    points = sorted(args.run.glob("checkpoints/edits-*.jsonl"))
    if not points:
        raise SystemExit(f"{args.run}: no checkpoints/edits-*.jsonl (not a sequential run)")
    if args.checkpoint is not None:
        points = [p for p in points if p.stem == f"edits-{args.checkpoint:06d}"]
        if not points:
            raise SystemExit(f"{args.run}: no checkpoint at {args.checkpoint} edits")
    point = points[-1]
    seq = {i: r.scores for i, r in read_scored(point).items() if r.ok}
    by_id = {c.case_id: c for c in read_cases(resolve_data(cfg["data"]))}
    cases = [by_id[i] for i in seq][: args.limit]

    editor = make_editor(cfg["editor"], cfg["model"], cfg.get("preset"), cfg.get("hparams"))
    # a --folds 2 sequential run edits fold 0 with the part fitted for it
    if editor.trainable and not (args.run / "fold0" / "DONE").is_file():
        raise SystemExit(f"{args.run}: {cfg['editor']} is trained, and the run has no finished fold0/ part")
    model, tok = load_model_for(cfg["model"], cfg.get("device"), cfg.get("dtype", "auto"))
    ensure_base_answers(model, tok, cases, cfg.get("answers_from"), model_name=cfg["model"])
    editor.prepare(model, tok)
    if editor.trainable:
        editor.load(args.run / "fold0")

    alone = []
    for case in tqdm(cases, desc=f"{cfg['editor']} alone", unit="case"):
        result = editor.apply(model, tok, [case])
        scores = evaluate_case(model, tok, case, model_name=cfg["model"], fluency=False,
                               budget=cfg.get("budget", "study"), evaluation=cfg.get("evaluation", "reference"))  # fmt: skip
        result.restore()
        alone.append({"case_id": case.case_id, **{m: getattr(scores, m).em for m in METRICS}})
    atomic_write_text(args.run / f"alone-{point.stem}.jsonl", "".join(json.dumps(a) + "\n" for a in alone))

    print(f"{cfg['editor']}, {len(alone)} cases scored at {point.stem}: EM x100, in the run vs edited alone")
    for m in METRICS:
        in_run = [getattr(seq[a["case_id"]], m).em for a in alone]
        moves = Counter((a[m], r) for a, r in zip(alone, in_run))
        print(f"  {m:15s} {100 * statistics.fmean(in_run):6.1f} vs {100 * statistics.fmean(a[m] for a in alone):6.1f}"
              f"   alone 1 -> run 0: {moves[(1.0, 0.0)]}, alone 0 -> run 1: {moves[(0.0, 1.0)]}")  # fmt: skip


if __name__ == "__main__":
    main()
