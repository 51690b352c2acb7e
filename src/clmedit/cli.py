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
    parse_hp,
    report_outcome,
    run_config,
    run_option,
    set_threads,
    user_error_message,
)

app = typer.Typer(
    cls=Commands, no_args_is_help=True, add_completion=False, help="Edit code LLMs and measure the edits."
)
data_app = typer.Typer(no_args_is_help=True, help="Build, import and inspect CLMEEval edit cases.")
app.add_typer(data_app, name="data")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


# --- data commands (room: data) ------------------------------------------------------------------


def _data_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from clmedit.data.llm import LLMError
    from clmedit.data.schema import CaseFileError
    from clmedit.data.sources import SourceError

    return (SourceError, CaseFileError, LLMError, ValidationError, ValueError, FileNotFoundError, ImportError)


def _data_exit(err: BaseException) -> typer.Exit:
    return fail(user_error_message(err) or str(err))


@data_app.command("build")
def data_build_cmd(
    task: str = typer.Option(..., "--task", "-t", help="cnle (NL->code) or csne (code->NL)"),
    source: str = typer.Option(
        "stdlib",
        "--source",
        "-s",
        help="stdlib | python-sources DIR... | conala PATH | codesearchnet PATH | hf:NAME",
    ),
    paths: list[Path] = typer.Argument(None, help="files or folders of the source"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="JSONL to write (default data/<task>-<source>.jsonl)"
    ),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="at most N edit cases"),
    seed: int = typer.Option(0, "--seed"),
    embedder: str = typer.Option(
        "minilm", "--embedder", help="minilm | any sentence-transformers name/path | bm25"
    ),
    rephrase: str = typer.Option(
        "auto", "--rephrase", help="CNLE: auto (human, else rule) | rule | human | llm"
    ),
    llm: str = typer.Option("local", "--llm", help="paraphrase backend: local[:MODEL] | openai:MODEL"),
    judge: str | None = typer.Option(None, "--judge", help="relevance judge backend (CNLE); off by default"),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="for the 512-token code limit (default: regex proxy)"
    ),
    pool_limit: int | None = typer.Option(None, "--pool-limit", min=1, help="subsample the neighbour pool"),
    model: str | None = typer.Option(None, "--model", "-m", help="precompute its neighbour answers"),
) -> None:
    """Build CLMEEval-style edit cases (default: from this Python's standard library, offline)."""
    from clmedit.data.build import BuildConfig, build_dataset, stats_path
    from clmedit.data.stats import format_stats

    label = source.replace("hf:", "hf-").replace("/", "-").replace(":", "-")
    out = out or Path("data") / f"{task}-{label}.jsonl"
    try:
        cfg = BuildConfig(
            task=task, source=source, paths=tuple(str(p) for p in paths or ()), seed=seed, limit=limit,
            embedder=embedder, rephrase=rephrase, llm=llm, judge=judge, tokenizer=tokenizer, pool_limit=pool_limit,
        )  # fmt: skip
        result = build_dataset(cfg, out)
        if model is not None:  # the answers go to their one home, the model's cache (run.prepare)
            from clmedit.models.load import load_model
            from clmedit.run.prepare import ensure_base_answers

            net, tok = load_model(model)
            ensure_base_answers(net, tok, result.cases)
    except _data_errors() as err:
        raise _data_exit(err) from None
    typer.echo(format_stats(result.stats))
    typer.echo(f"{len(result.cases)} cases in {out} (statistics in {stats_path(out)})")


@data_app.command("import-clmeeval")
def data_import_cmd(
    file: Path = typer.Argument(..., help="the released CLMEEval JSON (CNLE or CSNE)"),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL to write"),
) -> None:
    """Convert the released CLMEEval JSON into our case JSONL (neighbour answers kept per model)."""
    from collections import Counter

    from clmedit.data.clmeeval import read_clmeeval
    from clmedit.data.schema import write_cases

    skipped: Counter = Counter()
    try:
        cases = read_clmeeval(file, skipped)
    except _data_errors() as err:
        raise _data_exit(err) from None
    write_cases(out, cases)
    extra = f"; skipped {dict(skipped)}" if skipped else ""
    typer.echo(f"{len(cases)} cases written to {out}{extra}")


@data_app.command("show")
def data_show_cmd(
    file: Path = typer.Argument(..., help="a case JSONL"),
    n: int = typer.Option(3, "--n", "-n", min=0, help="cases to print"),
) -> None:
    """Print a few cases and the statistics (Table III lengths; Table II when a judge ran)."""
    import json

    from clmedit.data.build import stats_path
    from clmedit.data.schema import read_cases
    from clmedit.data.stats import format_stats, length_table

    try:
        cases = read_cases(file)
    except _data_errors() as err:
        raise _data_exit(err) from None
    for case in cases[:n]:
        typer.echo(f"--- {case.case_id} ({case.task}, rephrase: {case.meta.get('rephrase_kind', '?')})")
        typer.echo(f"prompt:   {case.prompt!r}\ntarget:   {case.target!r}\nrephrase: {case.rephrase!r}")
        for nb in case.neighbours:
            typer.echo(f"  neighbour: {nb.prompt[:100]!r}  answers: {sorted(nb.answers) or '-'}")
    saved = stats_path(file)
    stats = json.loads(saved.read_text()) if saved.is_file() else {"task": cases[0].task, "counts": {}}
    stats["counts"] = {**stats.get("counts", {}), "cases": len(cases)}
    stats["lengths"] = length_table(cases)  # always from the file as it is now
    typer.echo(format_stats(stats))


# --- run / bench / report / apply / train (room: runner) -----------------------------------------

BENCH_EDITORS = "none,ft,grace"  # the study's pair + the unedited row; add more with --editors
BENCH_LIMIT = 10  # cases per task: ~60 s CPU per CNLE+CSNE pair for none+ft+grace; leaves room for the first-use data build


@app.command("run")
def run_cmd(
    data: str = run_option("data"),
    out: Path = run_option("out"),
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
    fluency: bool = run_option("fluency"),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
    verify_restore: bool = run_option("verify_restore"),
    keys: bool = run_option("keys"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    answers_from: str | None = run_option("answers_from"),
    sequential: int | None = run_option("sequential"),
    checkpoints: str = run_option("checkpoints"),
) -> None:
    """Edit each case, evaluate it, restore; write cases.jsonl, summary.json and table.md.

    With --sequential N: apply N edits one after another without restoring, and evaluate every
    edited case at the checkpoints; write edits.jsonl, checkpoints/, summary.json and table.md.
    Exits 1 when cases failed (their errors are recorded; a rerun retries them), 2 on a usage error.
    """
    import json

    config = run_config(locals(), hp)
    set_threads(threads)
    from clmedit.run.runner import run

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
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """The main job: every editor on the default CNLE and CSNE cases; prints a Table IV-style table."""
    import time

    set_threads(threads)

    from clmedit.run.bench import bench, bench_editor_names, bench_tasks

    t0 = time.perf_counter()
    names, task_list = bench_editor_names(editors), bench_tasks(tasks)
    table, summaries = bench(model, names, task_list, limit, out, fluency, device, overwrite=overwrite, dtype=dtype)
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
    from clmedit.errors import InputError
    from clmedit.files import atomic_write_text
    from clmedit.report.tables import render_latex, render_markdown
    from clmedit.results import load_summaries

    if len(run_dirs) == 1 and (run_dirs[0] / "study.json").is_file():
        from clmedit.report.study import write_study_report

        typer.echo(f"report written to {write_study_report(run_dirs[0], out)}")
        return
    from clmedit.report.sequential import is_sequential, render_checkpoints, sequential_figures

    try:  # a summary.json edited or torn by hand is the user's file, not a bug
        found = load_summaries(run_dirs)
        summaries = [s for s in found if not is_sequential(s)]
        lifelong = [s for s in found if is_sequential(s)]
        markdown, latex = render_markdown(summaries), render_latex(summaries)
        sequential_md = render_checkpoints(lifelong) if lifelong else None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(
            f"a summary.json under {', '.join(map(str, run_dirs))} is malformed ({type(err).__name__}: {err}); "
            "rerun `clmedit run` into its folder to rewrite it"
        ) from None
    out = out or (run_dirs[0] / "report" if run_dirs[0].is_dir() else Path("report"))
    if summaries or not lifelong:
        atomic_write_text(out / "table.md", markdown + "\n")
        atomic_write_text(out / "table.tex", latex + "\n")
    if sequential_md is not None:
        atomic_write_text(out / "sequential.md", sequential_md + "\n")
        markdown = "\n\n".join(m for m in (markdown if summaries else "", sequential_md) if m)
    written = []
    if figures:
        from clmedit.report.figures import all_figures

        written = all_figures(summaries, out) + sequential_figures(lifelong, out)
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
    out: Path = typer.Option(Path("results/study"), "--out", "-o", help="study folder (resumes)"),
    fluency: bool = typer.Option(True, "--fluency/--no-fluency"),
    device: str | None = typer.Option(None, "--device"),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """The study's results section: every editor on CNLE and CSNE, then tables, figures and report.html."""
    if sum((quick, full, limit is not None)) > 1:
        raise fail("choose one of --quick, --full and --limit N")
    set_threads(threads)
    from clmedit.run.study import study

    size = "quick" if quick else "full" if full else "default"
    try:
        page = study(model, tuple(tasks.split(",")), size, limit, shard, out, device=device, fluency=fluency)
    except RuntimeError as err:  # some runs of the grid failed; the others and the report are written
        raise fail(str(err), code=1) from None
    typer.echo(f"report: {page}")


@app.command("apply")
def apply_cmd(
    model: str = run_option("model"),
    editor: str = typer.Option("grace", "--editor", "-e"),
    fixes: Path | None = typer.Option(
        None, "--fixes", help="JSONL of fixes: EditCase or {prompt|intent|code, target}"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="fix file (a directory) to write"),
    load: Path | None = typer.Option(None, "--load", help="fix file to load (never trains)"),
    trained: Path | None = typer.Option(
        None, "--trained", help="the editor's trained part (a folder written by `clmedit train`)"
    ),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="generate from this prompt (repeatable)"),
    task: str = typer.Option("cnle", "--task", help="template for bare prompts: cnle (intent) / csne (code)"),
    preset: str | None = run_option("preset"),
    hp: list[str] = typer.Option([], "--hp", help=HP_HELP),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Apply fixes and save the whole edit as a fix file (--fixes --out), or load one and generate
    (--load --prompt). A-GRACE, SCOPE and MALMEN apply with --trained DIR; the fix file then
    carries what loading needs."""
    from clmedit.data.schema import PROMPT_TEMPLATES
    from clmedit.errors import InputError

    if (fixes is None) == (load is None):
        raise InputError("give either --fixes FILE --out DIR (make an artifact) or --load DIR --prompt TEXT")
    if fixes is not None and out is None:
        raise InputError("--fixes needs --out DIR for the artifact")
    if load is not None and not prompt:
        raise InputError("--load needs at least one --prompt")
    if task not in PROMPT_TEMPLATES:
        raise InputError(f"--task {task!r} is not a task; use one of {', '.join(sorted(PROMPT_TEMPLATES))}")
    if load is not None and not (load / "manifest.json").is_file():
        raise InputError(
            f"--load {load} is not a clmedit fix file (no manifest.json); make one with --fixes --out"
        )
    if load is not None and trained is not None:
        raise InputError("--trained is for making a fix file (--fixes); a fix file carries its trained part")
    from clmedit.run.artifact import load_artifact, save_artifact
    from clmedit.run.checks import check_device, check_out_dir
    from clmedit.run.fixes import as_prompt, read_fixes
    from clmedit.run.runner import load_model_for, make_editor

    check_device(device)
    if fixes is not None:
        ed = make_editor(editor, model, preset, parse_hp(hp))
        if trained is not None:
            ed.load(trained)
        elif ed.trainable and not getattr(ed.hparams, ed.HParams.TRAINED_FROM or "", None):
            raise InputError(
                f"--editor {ed.name} needs its trained part: give --trained DIR, a folder written by "
                f"`clmedit train --editor {ed.name} --out DIR`"
            )
        cases = read_fixes(fixes, task)
        check_out_dir(out)
    m, tok = load_model_for(model, device, dtype)
    if fixes is not None:
        save_artifact(m, tok, ed, cases, out, model)
        typer.echo(f"fix file written to {out}")
    else:
        manifest = load_artifact(m, tok, load)
        typer.echo(f"loaded {manifest['editor']} edit of {manifest['fixes']} fix(es) from {load}")
    if prompt:
        from clmedit.eval.generate import generate

        texts = [as_prompt(p, task) for p in prompt]
        for text, answer in zip(texts, generate(m, tok, texts, max_new_tokens=max_new_tokens)):
            typer.echo(f"{text} {answer.strip()}")


@app.command("export")
def export_cmd(
    load: Path = typer.Option(..., "--load", help="the fix file to export (made by `clmedit apply --out`)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write"),
    model: str | None = typer.Option(None, "--model", "-m", help="the base model; default: the fix file's"),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Export a fix file: a plain Hugging Face checkpoint for weight editors (FT-L, ROME, MEMIT, PMET,
    AlphaEdit, MALMEN), adapter files for clmedit.load_edited(model, DIR) for GRACE-family and WISE."""
    from clmedit.errors import InputError
    from clmedit.run.artifact import read_manifest
    from clmedit.run.checks import check_device, check_out_dir
    from clmedit.run.export import export_fix
    from clmedit.run.runner import load_model_for

    if not (load / "manifest.json").is_file():
        raise InputError(
            f"--load {load} is not a clmedit fix file (no manifest.json); make one with `clmedit apply --out`"
        )
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty; give a new folder for the export")
    manifest = read_manifest(load)
    check_device(device)
    check_out_dir(out)
    m, tok = load_model_for(model or manifest["model"], device, dtype)
    done = export_fix(m, tok, load, out)
    how = "AutoModelForCausalLM.from_pretrained" if done["kind"] == "checkpoint" else "clmedit.load_edited"
    typer.echo(f"exported the {done['editor']} edit as {done['kind']} files to {out} (load with {how})")


# --- stats (room: locate) ------------------------------------------------------------------------


def _layer_range(spec: str) -> list[int]:
    """'4-8' -> [4, 5, 6, 7, 8]; '5' -> [5]; '4,6,8' -> [4, 6, 8]."""
    from clmedit.errors import InputError

    layers: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or not (hi or lo).isdigit() or int(hi or lo) < int(lo):
            raise InputError(f"--layers {spec!r}: give layer numbers like 4-8, 5 or 4,6,8")
        layers += list(range(int(lo), int(hi or lo) + 1))
    return sorted(set(layers))


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
    from clmedit.errors import InputError
    from clmedit.locate.stats import (
        DEFAULT_SAMPLES,
        DEFAULT_SEQ_LEN,
        corpus_files,
        corpus_fingerprint,
        layer_stats,
        stats_path,
    )
    from clmedit.models.arch import arch_of
    from clmedit.run.runner import load_model_for

    wanted = _layer_range(layers)
    if corpus is not None:
        corpus_files(corpus)  # a missing corpus fails before the model loads
    lm, tok = load_model_for(model, device)
    depth = arch_of(lm).num_layers(lm)
    if wanted[-1] >= depth:
        raise InputError(f"--layers {layers}: {model} has layers 0..{depth - 1}")
    n = samples if samples is not None else DEFAULT_SAMPLES
    t = seq_len if seq_len is not None else DEFAULT_SEQ_LEN
    layer_stats(lm, tok, wanted, corpus, n, t)
    from clmedit.models.fingerprint import model_fingerprint

    fp, mfp = corpus_fingerprint(corpus), model_fingerprint(lm, tok)
    for layer in wanted:
        typer.echo(stats_path(mfp, layer, fp, n, t))


# --- train (room: trained editors) ---------------------------------------------------------------


@app.command("train")
def train_cmd(
    editor: str = typer.Option(..., "--editor", "-e", help="a trainable editor: agrace, agrace-last, malmen"),
    data: str = run_option("data"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the trained part (e.g. RUN_DIR/fold0)"),
    model: str = run_option("model"),
    fold: int = typer.Option(0, "--fold", min=0, help="train for fold k: on every case outside fold k"),
    folds: int = typer.Option(2, "--folds", min=2, help="number of folds (the study: 2)"),
    limit: int | None = run_option("limit"),
    preset: str | None = run_option("preset"),
    hp: list[str] = typer.Option([], "--hp", help=HP_HELP),
    seed: int = run_option("seed"),
    device: str | None = run_option("device"),
) -> None:
    """Train an editor's learned part on the cases outside one fold and save it to OUT.

    The split is the runner's, so `clmedit train ... --fold k --out RUN/foldk` followed by
    `clmedit run ... --folds 2 --out RUN` evaluates fold k with this training (nothing retrained).
    """
    import json

    from clmedit.run.folds import train_fold

    typer.echo(json.dumps(train_fold(run_config(locals(), hp), fold)))


@app.command("editors")
def list_editors() -> None:
    """List the registered editors."""
    from clmedit.editors.registry import editor_names

    for name in editor_names():
        typer.echo(name)


if __name__ == "__main__":
    app()
