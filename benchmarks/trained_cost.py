"""What the trained editors cost: training time and peak memory, and apply time next to GRACE's.

    python benchmarks/trained_cost.py [--data default:cnle|cases.jsonl] [--model smollm2-135m] [--train 100]
        [--apply 10] [--malmen-steps 100] [--device cpu]

Trains A-GRACE's encoder (feature extraction uncached + encoder epochs) and MALMEN's
hypernetwork on the first `--train` cases, then applies each editor (and GRACE) to the next
`--apply` cases one at a time, restoring after each. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from clmedit.config import preset_for_model
from clmedit.data.schema import read_cases
from clmedit.editors.base import get_editor
from clmedit.models.cost import CostMeter
from clmedit.models.load import load_model
from clmedit.run.folds import disjoint_training
from clmedit.run.prepare import resolve_data


def _apply_seconds(editor, model, tok, cases) -> tuple[float, int]:
    secs, peak = [], 0
    for case in cases:
        result = editor.apply(model, tok, [case])
        secs.append(result.seconds)
        peak = max(peak, result.peak_bytes)
        result.restore()
    return statistics.fmean(secs), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="default:cnle", help="case JSONL or default:cnle / default:csne")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train", type=int, default=100, help="training cases")
    parser.add_argument("--apply", type=int, default=10, help="cases applied (one at a time) per editor")
    parser.add_argument("--malmen-steps", type=int, default=100)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    cases = read_cases(resolve_data(args.data))
    train, test = cases[: args.train], cases[args.train : args.train + args.apply]
    train = disjoint_training(train, test)[0]  # as the runner fits: no probe of the applied cases
    model, tok = load_model(args.model, device=args.device)
    rows = []
    for name, fit_kwargs in (
        ("grace", None),
        ("agrace", {}),
        ("agrace-no-cl", None),
        ("agrace-last", {}),
        ("malmen", {"steps": args.malmen_steps, "val_every": max(1, args.malmen_steps)}),
    ):
        editor = get_editor(name, preset=args.model if preset_for_model(args.model) else None)
        train_s, train_peak = 0.0, 0
        if fit_kwargs is not None:
            with tempfile.TemporaryDirectory() as cache:
                if name.startswith("agrace"):
                    fit_kwargs["feature_cache"] = cache  # empty: time the extraction too
                with CostMeter(next(model.parameters()).device) as meter:
                    editor.fit(model, tok, train, **fit_kwargs)
            train_s, train_peak = meter.seconds, meter.peak_bytes
        apply_s, apply_peak = _apply_seconds(editor, model, tok, test)
        rows.append((name, train_s, train_peak, apply_s, apply_peak))

    grace_apply = rows[0][3]
    print(f"model {args.model}, {len(train)} training cases, {len(test)} applied cases\n")
    print("| editor | train s | train peak MiB | apply s/case | x GRACE | apply peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts, tp, aps, app in rows:
        print(
            f"| {name} | {ts:.1f} | {tp / 2**20:.0f} | {aps:.2f} | {aps / grace_apply:.2f} | {app / 2**20:.0f} |"
        )


if __name__ == "__main__":
    main()
