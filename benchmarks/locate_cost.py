"""Cost of ROME / MEMIT / PMET edits and of the covariance statistics on smollm2-135m.

    python benchmarks/locate_cost.py [--edits 3] [--windows 32] [--model smollm2-135m]

Per-edit seconds and peak memory of `Editor.apply` next to the floor: value-optimisation steps x
one forward+backward of the upper stack (from the lowest optimised layer up, on the same rows),
plus the solve. Target: apply <= 1.5x floor. Statistics throughput (tokens/s, forward stopped
after the highest needed layer, K^T K accumulated) next to a plain full forward over the same
windows. Target: >= 0.8x. The statistics cache is bypassed (fresh computation) for the timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from cases import benchmark_cases

from clmedit.data.schema import EditCase
from clmedit.editors.base import get_editor
from clmedit.locate.keys import compute_keys
from clmedit.locate.solve import least_squares_update, rank_one_update
from clmedit.locate.stats import accumulate_mom2, token_windows
from clmedit.locate.values import ValueParams, _batch, site_path
from clmedit.models.arch import arch_of
from clmedit.models.hooks import Trace
from clmedit.models.load import load_model
from clmedit.models.partial import UpperStack, trainable_only


def floor_seconds(model, tok, case: EditCase, sites, hp: ValueParams, solve) -> float:
    """steps x (forward + backward of the upper stack on the value rows) + solve."""
    arch = arch_of(model)
    b = _batch(tok, [case.prompt], [case.target], hp.kl_suffix, "cpu")
    paths = [site_path(arch, s) for s in sites]
    with trainable_only(model):
        stack = UpperStack(model, min(layer for _, layer in sites), b["ids"], b["mask"])
        delta = torch.zeros(model.config.hidden_size, requires_grad=True)
        traces = [Trace(model, p, retain_output=False, edit_output=lambda o, _i: o + delta) for p in paths]
        t0 = time.perf_counter()
        for _ in range(3):
            stack().float().logsumexp(-1).mean().backward()
        step = (time.perf_counter() - t0) / 3
        for tr in traces:
            tr.close()
    t0 = time.perf_counter()
    solve()
    return hp.steps * step + (time.perf_counter() - t0)


def solver(model, tok, case: EditCase, layers: list[int], d_in: int, rank_one: bool):
    """The non-iterative part of an edit: keys under the current weights, then the closed form."""
    d_out = model.config.hidden_size
    k, r, cov = torch.randn(d_in), torch.randn(d_out), torch.eye(d_in)

    def solve() -> None:
        if rank_one:
            compute_keys(model, tok, [case.prompt], layers)
            rank_one_update(k, r)
            return
        for layer in layers:
            compute_keys(model, tok, [case.prompt], [layer])
            least_squares_update(k[None], r[None], cov, 15000.0)

    return solve


def bench_editors(model, tok, n_edits: int, stats_samples: int) -> None:
    arch, cases = arch_of(model), benchmark_cases(n_edits)
    d_in = arch.mlp_dim(model)
    for name in ("rome", "memit", "pmet"):
        editor = get_editor(name, "smollm2-135m", stats_samples=stats_samples)
        if hasattr(editor, "prepare"):
            editor.prepare(model, tok)  # statistics are a one-off, cached cost
        hp = editor.hparams
        layers = hp.layers_for(hp.layers, arch.num_layers(model))
        secs, peaks = [], []
        for case in cases:
            result = editor.apply(model, tok, [case])
            secs.append(result.seconds)
            peaks.append(result.peak_bytes)
            result.restore()
        if name == "rome":
            sites = [("down_proj", layers[0])]
        else:
            sites = (
                [("block", layers[-1])] if name == "memit" else [("attn", layers[-1]), ("mlp", layers[-1])]
            )
        solve = solver(model, tok, cases[0], layers, d_in, rank_one=name == "rome")
        floor = statistics.median(
            floor_seconds(model, tok, c, sites, hp.value_params(), solve) for c in cases
        )
        med = statistics.median(secs)
        print(
            f"{name:6s} layers {layers}: {med:6.2f} s/edit, peak {max(peaks) / 2**20:7.0f} MiB | "
            f"floor {floor:6.2f} s -> {med / floor:4.2f}x (target <= 1.5x)"
        )


@torch.no_grad()
def bench_stats(model, tok, windows: int) -> None:
    batch = list(token_windows(tok, None, windows, 256))
    n_tok = sum(len(w) for w in batch)
    t0 = time.perf_counter()
    accumulate_mom2(model, tok, [4, 5, 6, 7, 8], None, windows, 256, batch_size=8)
    stats_tps = n_tok / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, len(batch), 8):
        rows = batch[i : i + 8]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, : len(r)], mask[j, : len(r)] = torch.tensor(r), 1
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    plain_tps = n_tok / (time.perf_counter() - t0)
    print(
        f"stats layers 4-8: {stats_tps:7.0f} tok/s vs plain forward {plain_tps:7.0f} tok/s "
        f"-> {stats_tps / plain_tps:4.2f}x (target >= 0.8x), {n_tok} tokens"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--windows", type=int, default=32, help="corpus windows for the stats throughput")
    ap.add_argument("--stats-samples", type=int, default=200, help="windows of the editors' statistics")
    args = ap.parse_args()
    model, tok = load_model(args.model, device="cpu")
    print(f"threads {torch.get_num_threads()}")
    bench_stats(model, tok, args.windows)
    bench_editors(model, tok, args.edits, args.stats_samples)


if __name__ == "__main__":
    main()
