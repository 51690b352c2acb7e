"""The command line: every command is a thin call into the library.

Heavy modules (torch, transformers) are imported inside commands, so `clmedit --help` is instant.
Each section below is owned by one room; keep commands thin.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from clmedit.cli_common import (
    HP_HELP,
    OVERWRITE_HELP,
    THREADS_HELP,
    Commands,
    fail,
    report_outcome,
    run_config,
    run_option,
    set_threads,
)
from clmedit.cli_data import data_app
from clmedit.cli_fixes import apply_cmd, export_cmd
from clmedit.cli_serve import serve_cmd

app = typer.Typer(
    cls=Commands, no_args_is_help=True, add_completion=False, help="Edit code LLMs and measure the edits."
)
app.add_typer(data_app, name="data")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


# --- run / bench / report / study (room: runner); data: cli_data.py; apply / export: cli_fixes.py -----------------------------------------

BENCH_EDITORS = "none,ft,grace"  # the study's pair + the unedited row; add more with --editors
BENCH_LIMIT = 10  # cases per task: ~60 s CPU per CNLE+CSNE pair for none+ft+grace; leaves room for the first-use data build


@app.command("run")
def run_cmd(
    data: str = run_option("data"),
    out: str = run_option("out"),
    model: str = run_option("model"),
    editor: str = run_option("editor"),
    limit: int | None = run_option("limit"),
    preset: str | None = run_option("preset"),
    hp: list[str] = typer.Option([], "--hp", help=HP_HELP),
    seed: int = run_option("seed"),
    shard: str = run_option("shard"),
    batch_size: int = run_option("batch_size"),
    folds: int = run_option("folds"),
    eval_limit: int | None = run_option("eval_limit"),
    folds_overlap: bool = run_option("folds_overlap"),
    fluency: bool = run_option("fluency"),
    budget: str = run_option("budget"),
    evaluation: str = run_option("evaluation", "--eval", "--evaluation"),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
    verify_restore: bool = run_option("verify_restore"),
    keys: bool = run_option("keys"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    answers_from: str | None = run_option("answers_from"),
    sequential: int | None = run_option("sequential"),
    checkpoints: str = run_option("checkpoints"),
    score_sample: int | None = run_option("score_sample"),
    snapshot_every: int = run_option("snapshot_every"),
) -> None:
    """Edit each case, evaluate it, restore; write cases.jsonl, summary.json and table.md.

    With --sequential N: apply N edits one after another without restoring, and evaluate every
    edited case at the checkpoints; write edits.jsonl, checkpoints/, summary.json and table.md.
    Exits 1 when cases failed (their errors are recorded; a rerun retries them), 2 on a usage error.
    """
    import json

    config = run_config(locals(), hp)
    set_threads(threads)
    from clmedit.grid.cell import run

    run_dir = run(config, overwrite=overwrite)
    typer.echo((run_dir / "table.md").read_text())
    typer.echo(f"results in {run_dir}")
    report_outcome([json.loads((run_dir / "summary.json").read_text())], run_dir)


@app.command("bench")
def bench_cmd(
    model: str = run_option("model"),
    editors: str = typer.Option(BENCH_EDITORS, "--editors", help="comma-separated editor names, or 'all'"),
    tasks: str = typer.Option("cnle,csne", "--tasks", help="default datasets to use"),
    limit: int = typer.Option(BENCH_LIMIT, "--limit", "-n", min=1, help="cases per task"),
    out: Path = typer.Option(Path("results/bench"), "--out", "-o"),
    fluency: bool = run_option("fluency"),
    evaluation: str = run_option("evaluation", "--eval", "--evaluation"),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """The main job: every editor on the default CNLE and CSNE cases; prints a Table IV-style table."""
    import time

    from clmedit.outputs import check_output_dir, foreign_entries

    # bench writes table.md and one run folder per (model, task, editor), each checked by the runner
    check_output_dir(out, ours=lambda p: not foreign_entries(p, lambda e: e.name == "table.md" or e.is_dir()))
    if evaluation not in ("fast", "reference"):  # checked before the model loads
        raise fail(f"--eval must be 'fast' or 'reference', got {evaluation!r}")
    set_threads(threads)

    from clmedit.grid.bench import bench, bench_editor_names, bench_tasks

    t0 = time.perf_counter()
    names, task_list = bench_editor_names(editors), bench_tasks(tasks)
    table, summaries = bench(model, names, task_list, limit, out, fluency, device, overwrite=overwrite, dtype=dtype,
                             evaluation=evaluation)  # fmt: skip
    typer.echo(table)
    typer.echo(
        f"\n{len(names)} editors x {tasks} x {limit} cases in {time.perf_counter() - t0:.0f} s; see {out}"
    )
    report_outcome(summaries, out)


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run directories (searched for summary.json), or a study folder"),
    out: Path | None = typer.Option(None, "--out", "-o", help="where tables and figures go (nothing is written elsewhere)"),
    figures: bool = typer.Option(True, "--figures/--no-figures"),
) -> None:
    """Table IV-style Markdown + LaTeX tables and the cost/distance/PCA figures from run directories."""
    from clmedit.outputs import output_path

    if out is not None:
        output_path(out)
    if len(run_dirs) == 1 and (run_dirs[0] / "study.json").is_file():
        from clmedit.report.study import write_study_report

        typer.echo(f"report written to {write_study_report(run_dirs[0], out)}")
        return
    from clmedit.report.runs import write_report

    markdown, out, written = write_report(run_dirs, out, figures)
    typer.echo(markdown)
    typer.echo(f"\ntables in {out}; {len(written)} figure(s): " + ", ".join(str(p) for p in written))


@app.command("study")
def study_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="model name, HF id, path or GGUF"),
    tasks: str = typer.Option("cnle,csne", "--tasks", help="cnle and/or csne (the built-in cases)"),
    quick: bool = typer.Option(False, "--quick", help="every editor and table, few cases and steps (~15 min)"),
    full: bool = typer.Option(False, "--full", help="every built case and the presets' training"),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="N cases per run for every editor"),
    shard: str = typer.Option("0/1", "--shard", help="i/n: this process runs every n-th run of the grid"),
    out: str = typer.Option("results/study", "--out", "-o", help="study folder (resumes)"),
    fluency: bool = typer.Option(True, "--fluency/--no-fluency"),
    budget: str = run_option("budget"),
    evaluation: str = run_option("evaluation", "--eval", "--evaluation"),
    device: str | None = typer.Option(None, "--device"),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP + " (with --ray: per worker, default 1)"),
    ray: str | None = typer.Option(None, "--ray", help="run the grid on Ray: local (a cluster here), auto (the running one) or ray://HOST:PORT"),
    workers: int = typer.Option(1, "--workers", min=1, help="with --ray: Ray workers, each holding one model"),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="with --ray: GPUs each worker reserves (fractions share one)"),
    folds_overlap: bool = run_option("folds_overlap"),
) -> None:  # fmt: skip
    """The study's results section: every editor on CNLE and CSNE, then tables, figures and report.html."""
    from clmedit.outputs import check_output_dir

    if sum((quick, full, limit is not None)) > 1:
        raise fail("choose one of --quick, --full and --limit N")
    if evaluation not in ("fast", "reference"):
        raise fail(f"--eval must be 'fast' or 'reference', got {evaluation!r}")
    if ray is None and (workers != 1 or gpus_per_worker):
        raise fail("--workers and --gpus-per-worker need --ray local|auto|ray://HOST:PORT")
    out = check_output_dir(out, ours=lambda p: (p / "study.json").is_file())  # before any model loads
    set_threads(threads)
    from clmedit.grid.distributed import Cluster
    from clmedit.grid.study import study

    size = "quick" if quick else "full" if full else "default"
    cluster = None if ray is None else Cluster(ray, workers, gpus_per_worker, threads or 1)
    try:
        page = study(model, tuple(tasks.split(",")), size, limit, shard, out, device=device, fluency=fluency,
                     folds_overlap=folds_overlap, cluster=cluster, budget=budget, evaluation=evaluation)  # fmt: skip
    except RuntimeError as err:  # some runs of the grid failed; the others and the report are written
        raise fail(str(err), code=1) from None
    typer.echo(f"report: {page}")


app.command("apply")(apply_cmd)  # fix files: cli_fixes.py
app.command("export")(export_cmd)
app.command("serve")(serve_cmd)  # the OpenAI API: cli_serve.py


# --- stats (room: locate) ------------------------------------------------------------------------


@app.command("stats")
def stats(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="model name, HF id, folder or .gguf"),
    layers: str = typer.Option("4-8", help="layers of the model itself (not rescaled), e.g. 4-8 or 5,7"),
    corpus: str = typer.Option(None, help="text/JSONL file or folder; default: the stdlib's Python sources"),
    samples: int = typer.Option(None, min=1, help="corpus windows to read (default 1000)"),
    seq_len: int = typer.Option(None, min=1, help="tokens per window (default 256)"),
    device: str = typer.Option(None, help="cpu / cuda (default: cuda when available)"),
) -> None:
    """Compute and cache the second-moment statistics MEMIT/PMET use (runs reuse the cache)."""
    from clmedit.locate.stats import cache_stats, corpus_files, parse_layers
    from clmedit.run.setup import load_model_for

    wanted = parse_layers(layers)
    if corpus is not None:
        corpus_files(corpus)  # a missing corpus fails before the model loads
    lm, tok = load_model_for(model, device)
    for path in cache_stats(lm, tok, wanted, corpus, samples, seq_len):
        typer.echo(path)


# --- train (room: trained editors) ---------------------------------------------------------------


@app.command("train")
def train_cmd(
    editor: str = typer.Option(..., "--editor", "-e", help="a trainable editor: one that learns a part (others are refused, saying so)"),
    data: str = run_option("data"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the trained part (e.g. RUN_DIR/fold0)"),
    model: str = run_option("model"),
    fold: int = typer.Option(0, "--fold", min=0, help="train for fold k: on every case outside fold k"),
    folds: int = typer.Option(2, "--folds", min=2, help="number of folds (the study: 2)"),
    folds_overlap: bool = run_option("folds_overlap"),
    limit: int | None = run_option("limit"),
    preset: str | None = run_option("preset"),
    hp: list[str] = typer.Option([], "--hp", help=HP_HELP),
    seed: int = run_option("seed"),
    device: str | None = run_option("device"),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Train an editor's learned part on the cases outside one fold and save it to OUT.

    The split is the runner's, so `clmedit train ... --fold k --out RUN/foldk` followed by
    `clmedit run ... --folds 2 --out RUN` evaluates fold k with this training (nothing retrained).
    """
    import json

    from clmedit.run.folds import train_fold

    set_threads(threads)
    typer.echo(json.dumps(train_fold(run_config(locals(), hp), fold)))


@app.command("editors")
def list_editors() -> None:
    """List the registered editors (without importing any: the registry is torch-free)."""
    from clmedit.editors.registry import editor_names

    for name in editor_names():
        typer.echo(name)


if __name__ == "__main__":
    app()
