"""Lifelong editing: N sequential edits of one editor, then retention, cost and memory over the edits.

    python benchmarks/sequential.py --editor grace --edits 1000 --data default:cnle --threads 1 \
        --out results/sequential/grace [--batch-size 1] [--checkpoints 1,10,100,1000] [--fluency] \
        [--score-sample 500]

Runs `clmedit run --sequential N` (resumable: rerun the same command after an interruption) and
prints, at each checkpoint, retention (effectiveness of every edit made so far), generalization and
specificity EM x100; the seconds per edit at the start vs the end (median of the first 10 edits vs
the last 10, and their ratio); and the growth of resident memory: RSS after the last edit minus RSS
before the first, and minus RSS after the first checkpoint (whose generation allocates one-off
buffers, ~70 MB on smollm2-135m, that do not grow with the edits; the target is about the latter). Targets for GRACE on smollm2-135m, 1,000 CNLE edits: retention EM >= 95,
specificity EM >= 90, end/start seconds ratio <= 1.2, RSS growth <= 50 MB. With --score-sample K each
checkpoint scores a fixed random sample of K edited cases (drawn with the run's seed) instead of all.

Data: `default:cnle` (mined from the standard library) has fewer than 1,000 cases, and so has
`default:csne`. When --data is either and short of --edits, the benchmark builds (once, cached under
`$CLMEDIT_CACHE/data`) a larger set of the same task with the same pipeline (`clmedit data build
--task TASK --source python-sources DIR...`) from the standard library plus the installed packages
named by --extra-packages (default torch and sympy, both present wherever clmedit's torch is),
offline. It prints which data it used; a case file short of --edits is an error (no wrap-around).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
from importlib import metadata, util
from pathlib import Path

import clmedit  # noqa: F401  (before torch, so that its MKL buffer setting applies: see clmedit/__init__.py)

EXTRA_PACKAGES = "torch,sympy"
POOL_LIMIT = 20000  # neighbour pool of the larger set (the embedding step's cost grows with it)


def _package_dir(name: str) -> Path:
    spec = util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"--extra-packages: {name!r} is not an installed package folder")
    return Path(next(iter(spec.submodule_search_locations)))


def larger_set(task: str, packages: list[str], seed: int = 0) -> Path:
    """`task` cases mined from the stdlib plus `packages`, built once and cached (sealed) by content."""
    from clmedit.data.build import PIPELINE_VERSION, BuildConfig, build_dataset
    from clmedit.data.sources.python_sources import stdlib_dir, stdlib_fingerprint
    from clmedit.files import cache_root, is_sealed, locked, write_seal

    dirs = [stdlib_dir(), *(_package_dir(p) for p in packages)]
    cfg = BuildConfig(task=task, source="python-sources", paths=tuple(map(str, dirs)), seed=seed,
                      pool_limit=POOL_LIMIT)  # fmt: skip
    versions = {p: metadata.version(p) for p in packages}
    key = hashlib.sha256(
        f"{cfg.model_dump_json()}|v{PIPELINE_VERSION}|{stdlib_fingerprint()}|{sorted(versions.items())}".encode()
    ).hexdigest()[:12]
    path = cache_root() / "data" / f"{task}-stdlib+{'+'.join(packages)}-seed{seed}-{key}.jsonl"
    with locked(path):
        if not is_sealed(path):
            print(
                f"building a larger {task.upper()} set from the stdlib + {', '.join(packages)} into {path} (once)"
            )
            build_dataset(cfg, path)
            write_seal(path)
    return path


def pick_data(data: str, edits: int, packages: list[str]) -> str:
    """`data`, or the larger stdlib+packages set of its task when `data` is a default set and too short."""
    from clmedit.data.schema import read_cases
    from clmedit.run.prepare import resolve_data

    path = resolve_data(data)
    n = len(read_cases(path))
    if n >= edits:
        print(f"data: {data} ({path}, {n} cases)")
        return data
    if data not in ("default:cnle", "default:csne"):
        sys.exit(f"{data} holds {n} cases, fewer than --edits {edits}; give a larger case file")
    task = data.split(":", 1)[1]
    bigger = larger_set(task, packages)
    m = len(read_cases(bigger))
    print(
        f"data: {data} has {n} cases; using {task.upper()} mined from the stdlib + {', '.join(packages)}: {bigger} ({m} cases)"
    )
    if m < edits:
        sys.exit(f"the larger set has {m} cases, fewer than --edits {edits}; add --extra-packages")
    return str(bigger)


def _em(row: dict, group: str) -> str:
    value = ((row.get("metrics") or {}).get(group) or {}).get("em")
    return "   -" if value is None else f"{value:6.1f}"


def report(out: Path) -> None:
    """Print the checkpoints, the start/end seconds per edit and the RSS growth of a finished run."""
    from clmedit.results import per_edit_seconds, read_edits

    summary = json.loads((out / "summary.json").read_text())
    print(f"\n{summary['label']} on {summary['model']}, {summary['counts']['applied']} edits applied "
          f"({summary['counts']['failed']} failed), batch size {summary['sequential']['batch_size']}")  # fmt: skip
    sample = summary["sequential"].get("score_sample")
    if sample:
        print(
            f"each checkpoint scores a fixed random sample of {sample['size']} edited cases (seed {sample['seed']})"
        )
    print(" edits  retention EM  generalization EM  specificity EM  spec. cases  excluded  s/edit  RSS MiB")
    for r in summary["sequential"]["checkpoints"]:
        secs, rss = r.get("seconds_per_edit"), r.get("rss_bytes")
        print(f"{r['edits']:6d}  {_em(r, 'effectiveness'):>12}  {_em(r, 'generalization'):>17}  "
              f"{_em(r, 'specificity'):>14}  {r.get('specificity_cases', 0):11d}  {r.get('neighbours_excluded', 0):8d}  "
              f"{'-' if secs is None else f'{secs:6.3f}':>6}  {'-' if rss is None else f'{rss / 2**20:7.0f}':>7}"
              + ("" if r.get("complete") else "  (incomplete)"))  # fmt: skip
    per_edit = [(e["edits"], s) for e in read_edits(out) if (s := per_edit_seconds(e)) is not None]
    if len(per_edit) >= 2:
        k = min(10, len(per_edit) // 2)
        start = statistics.median(s for _, s in per_edit[:k])
        end = statistics.median(s for _, s in per_edit[-k:])
        print(f"seconds per edit: {start:.3f} (median of the first {k} calls) -> {end:.3f} (the last {k}, "
              f"up to edit {per_edit[-1][0]}); ratio {end / start:.2f} (target <= 1.2)")  # fmt: skip
    calls = [e for e in read_edits(out) if e.get("rss_bytes") is not None]
    if calls:
        mib = 2**20
        first, last = calls[0]["rss_before_bytes"], calls[-1]["rss_bytes"]
        print(f"resident memory: {first / mib:.0f} MiB before the first edit, {last / mib:.0f} MiB after the last: "
              f"growth {(last - first) / 1e6:.1f} MB")  # fmt: skip
        if len(calls) > 2:  # the first checkpoint's generation allocates one-off buffers: leave them out
            warm = calls[1]["rss_before_bytes"]
            print(f"  from after the first checkpoint ({warm / mib:.0f} MiB) to the last edit: "
                  f"{(last - warm) / 1e6:.1f} MB (target <= 50 MB over 1,000 edits)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--editor", default="grace")
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--data", default="default:cnle")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--checkpoints", default="1,10,100,1000")
    ap.add_argument(
        "--score-sample", type=int, default=None, help="score K sampled edited cases per checkpoint"
    )
    ap.add_argument("--fluency", action="store_true", help="also sample fluency at each checkpoint (slow)")
    ap.add_argument("--hp", action="append", default=[], help="hparams override key=value (repeatable)")
    ap.add_argument("--extra-packages", default=EXTRA_PACKAGES, help="packages mined for a larger set")
    ap.add_argument(
        "--folds",
        type=int,
        default=1,
        help="2 for trained editors (A-GRACE, SCOPE, MALMEN): fit on fold 1, edit fold 0",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from clmedit.cli_common import parse_hp
    from clmedit.grid.cell import run
    from clmedit.run.settings import RunConfig

    data = pick_data(args.data, args.edits, [p for p in args.extra_packages.split(",") if p])
    config = RunConfig(model=args.model, editor=args.editor, data=data, out=args.out, sequential=args.edits,
                       folds=args.folds, batch_size=args.batch_size, checkpoints=args.checkpoints,
                       fluency=args.fluency, score_sample=args.score_sample,
                       device=args.device, hparams=parse_hp(args.hp))  # fmt: skip
    report(run(config))


if __name__ == "__main__":
    main()
