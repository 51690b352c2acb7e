"""`clmedit serve` under load: requests/s and p50 / p95 latency of 16-token completions.

    OMP_NUM_THREADS=1 python benchmarks/serve.py [--fixes 100] [--requests 32] [--threads 1]

Starts `clmedit serve` (the default model, GRACE with its smollm2-135m preset, a fix file in a
temporary folder) as its own process on a free local port, then for 0 and for N live fixes sends
`--requests` completions (max_tokens 16, greedy, prompts of the benchmark's CNLE cases) from 1
and from 8 concurrent clients and prints requests/s and latency percentiles. The N fixes are
added over HTTP in one POST while the server runs (its seconds are printed too), then the newest
fix is taken back and added again (a take-back of the newest fix restores without training).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cases import benchmark_cases

TOKENS = 16


def call(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as resp:
        return json.loads(resp.read())


def start_server(model: str, fix_dir: Path, threads: int, hp: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "clmedit.cli", "serve", "--model", model, "--load", str(fix_dir),
           "--port", str(port), "--threads", str(threads), "--device", "cpu"]  # fmt: skip
    cmd += [a for h in hp for a in ("--hp", h)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            call(f"{url}/v1/models")
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 10 minutes")


def measure(url: str, model: str, prompts: list[str], clients: int, requests: int) -> dict[str, float]:
    """Send `requests` completions from `clients` threads; requests/s, latency percentiles, tokens."""

    def one(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        reply = call(f"{url}/v1/completions", "POST",
                     {"model": model, "prompt": prompts[i % len(prompts)], "max_tokens": TOKENS})  # fmt: skip
        return time.perf_counter() - t0, reply["usage"]["completion_tokens"]

    one(0)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    lat = sorted(s for s, _ in done)
    return {
        "rps": requests / wall,
        "p50": statistics.median(lat),
        "p95": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
        "tokens": statistics.mean(n for _, n in done),
    }


def timed(what: str, url: str, method: str, body: dict | None = None) -> dict:
    t0 = time.perf_counter()
    reply = call(url, method, body)
    print(f"{what} in {time.perf_counter() - t0:.2f} s", flush=True)
    return reply


def add_fixes(url: str, cases: list) -> None:
    """All but the last fix in one POST, the last in one of its own; then take that one back and
    add it again (the newest fix goes back by a restore alone, no training)."""
    fixes = [{"prompt": c.prompt, "target": c.target} for c in cases]
    timed(f"added {len(fixes) - 1} fixes live", f"{url}/v1/fixes", "POST", {"fixes": fixes[:-1]})
    last = timed("added 1 fix live", f"{url}/v1/fixes", "POST", {"fixes": fixes[-1:]})["data"][0]["id"]
    timed("took the newest fix back", f"{url}/v1/fixes/{last}", "DELETE")
    timed("added it again", f"{url}/v1/fixes", "POST", {"fixes": fixes[-1:]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--fixes", type=int, default=100)
    ap.add_argument("--requests", type=int, default=32, help="completions per setting")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--data", default=None, help="case file (default: CoNaLa pairs, else default:cnle)")
    ap.add_argument("--hp", action="append", default=[], help="GRACE hparams override for the server, e.g. n_iter=5")
    args = ap.parse_args()
    cases = benchmark_cases(args.fixes, args.data)
    prompts = [c.prompt for c in cases[:32]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.model, Path(tmp) / "fix", args.threads, args.hp)
        try:
            for n_fixes in (0, args.fixes):
                if n_fixes:
                    add_fixes(url, cases[:n_fixes])
                for clients in map(int, args.clients.split(",")):
                    r = measure(url, args.model, prompts, clients, args.requests)
                    rows.append((n_fixes, clients, r))
                    print(f"fixes {n_fixes:4d}  clients {clients}  {r['rps']:6.2f} req/s  p50 {r['p50']:.2f} s  "
                          f"p95 {r['p95']:.2f} s  ({r['tokens']:.1f} tokens/answer)", flush=True)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(60)
    print(f"\n{args.model}, {TOKENS}-token greedy completions, {args.requests} per row, server threads "
          f"{args.threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, hp {args.hp}")  # fmt: skip
    print("| live fixes | clients | requests/s | p50 s | p95 s |\n|---|---|---|---|---|")
    for n_fixes, clients, r in rows:
        print(f"| {n_fixes} | {clients} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} |")
    base = {c: r["rps"] for n, c, r in rows if n == 0}
    for n_fixes, clients, r in rows:
        if n_fixes:
            print(f"{clients} client(s): {n_fixes} fixes serve at {r['rps'] / base[clients]:.2f}x the unfixed rate")


if __name__ == "__main__":
    main()
