"""Apply seconds of SCOPE against GRACE's, measured interleaved in one process (load drifts cancel).

    python benchmarks/scope_cost.py --trained RUN_DIR/fold0 [--data default:cnle] [--cases 20] [--threads 1]

`--trained` is a fitted SCOPE (`clmedit train --editor scope ... --out DIR`, or a `--folds 2` run's
fold folder). For each case, GRACE and SCOPE (same smollm2-135m preset values) each apply the edit
and restore it, alternating which goes first; prints the median seconds of each and their ratio
(the target: SCOPE <= 1.5x GRACE).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trained", type=Path, required=True)
    ap.add_argument("--data", default="default:cnle")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clmedit.data.schema import read_cases
    from clmedit.editors.base import get_editor
    from clmedit.models.load import load_model
    from clmedit.run.prepare import resolve_data

    model, tok = load_model(args.model, device="cpu")
    scope = get_editor("scope", preset=args.model)
    scope.load(args.trained)
    editors = {"grace": get_editor("grace", preset=args.model), "scope": scope}
    seconds: dict[str, list[float]] = {name: [] for name in editors}
    cases = read_cases(resolve_data(args.data))[-args.cases :]  # the file's last cases
    for i, case in enumerate(cases):
        order = list(editors) if i % 2 == 0 else list(reversed(editors))
        for name in order:
            result = editors[name].apply(model, tok, [case])
            seconds[name].append(result.seconds)
            result.restore()
    grace, mine = statistics.median(seconds["grace"]), statistics.median(seconds["scope"])
    print(f"{len(cases)} cases of {args.data}, {torch.get_num_threads()} thread(s)")
    print(
        f"median apply seconds: GRACE {grace:.3f}, SCOPE {mine:.3f}; ratio {mine / grace:.2f} (target <= 1.5)"
    )


if __name__ == "__main__":
    main()
