"""The command line: every command is a thin call into the library.

Heavy modules (torch, transformers) are imported inside commands, so `clmedit --help` is instant.
Each section below is owned by one room; keep commands thin.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Edit code LLMs and measure the edits.")
data_app = typer.Typer(no_args_is_help=True, help="Build, import and inspect CLMEEval edit cases.")
app.add_typer(data_app, name="data")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


# --- data commands (room: data) ------------------------------------------------------------------


# --- run / bench / report / apply (room: runner) -------------------------------------------------

BENCH_EDITORS = "none,ft,grace"  # the study's pair + the unedited row; add more with --editors
BENCH_LIMIT = 50  # cases per task: sized so `clmedit bench` takes about 15 minutes on 2 CPU cores


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error (no traceback) and return the Exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    return (ValueError, FileNotFoundError, KeyError, NotImplementedError, ImportError, ValidationError)


def _parse_hp(pairs: list[str]) -> dict:
    """['lr=1e-4', 'layers=[3]'] -> {'lr': 0.0001, 'layers': [3]} (values parsed as YAML)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hp expects key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command("run")
def run_cmd(
    data: str = typer.Option(..., "--data", "-d", help="case JSONL, or default:cnle / default:csne"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (resumes if it has records)"),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="model name, HF id, path or GGUF"),
    editor: str = typer.Option(
        "none", "--editor", "-e", help="editor name (`clmedit editors`); none = unedited"
    ),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="first N cases"),
    preset: str | None = typer.Option(None, "--preset", help="hparams preset or YAML (default: by model)"),
    hp: list[str] = typer.Option([], "--hp", help="hparams override key=value (repeatable)"),
    seed: int = typer.Option(0, "--seed"),
    shard: str = typer.Option("0/1", "--shard", help="i/n: this process runs every n-th case from i"),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="cases per edit (1 = single edits)"),
    folds: int = typer.Option(1, "--folds", min=1, help="k-fold protocol for trainable editors (study: 2)"),
    fluency: bool = typer.Option(True, "--fluency/--no-fluency", help="sample texts for fluency (slow)"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ..."),
    verify_restore: bool = typer.Option(False, "--verify-restore", help="checksum weights after each case"),
) -> None:
    """Edit each case, evaluate it, restore; write cases.jsonl, summary.json and table.md."""
    from clmedit.data.schema import CaseFileError
    from clmedit.run.runner import RunConfig, run

    try:
        config = RunConfig(
            model=model, editor=editor, data=data, out=out, limit=limit, preset=preset, hparams=_parse_hp(hp),
            seed=seed, shard=shard, batch_size=batch_size, folds=folds, fluency=fluency, device=device,
            verify_restore=verify_restore,
        )  # fmt: skip
        run_dir = run(config)
    except (CaseFileError, *_user_errors()) as err:
        raise _fail(str(err)) from None
    typer.echo((run_dir / "table.md").read_text())
    typer.echo(f"results in {run_dir}")


@app.command("bench")
def bench_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    editors: str = typer.Option(BENCH_EDITORS, "--editors", help="comma-separated editor names, or 'all'"),
    tasks: str = typer.Option("cnle,csne", "--tasks", help="default datasets to use"),
    limit: int = typer.Option(BENCH_LIMIT, "--limit", "-n", min=1, help="cases per task"),
    out: Path = typer.Option(Path("results/bench"), "--out", "-o"),
    fluency: bool = typer.Option(True, "--fluency/--no-fluency"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """The main job: every editor on the default CNLE and CSNE cases; prints a Table IV-style table."""
    import time

    from clmedit.run.bench import bench, bench_editor_names

    t0 = time.perf_counter()
    try:
        names = bench_editor_names(editors)
        table = bench(
            model, names, [t.strip() for t in tasks.split(",") if t.strip()], limit, out, fluency, device
        )
    except _user_errors() as err:
        raise _fail(str(err)) from None
    typer.echo(table)
    typer.echo(
        f"\n{len(names)} editors x {tasks} x {limit} cases in {time.perf_counter() - t0:.0f} s; see {out}"
    )


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run directories (searched for summary.json)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="where tables and figures go"),
    figures: bool = typer.Option(True, "--figures/--no-figures"),
) -> None:
    """Table IV-style Markdown + LaTeX tables and the cost/distance/PCA figures from run directories."""
    from clmedit.data.schema import atomic_write_text
    from clmedit.report.tables import load_summaries, render_latex, render_markdown

    try:
        summaries = load_summaries(run_dirs)
    except (FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    out = out or (run_dirs[0] / "report" if run_dirs[0].is_dir() else Path("report"))
    markdown = render_markdown(summaries)
    atomic_write_text(out / "table.md", markdown + "\n")
    atomic_write_text(out / "table.tex", render_latex(summaries) + "\n")
    written = []
    if figures:
        from clmedit.report.figures import all_figures

        written = all_figures(summaries, out)
    typer.echo(markdown)
    typer.echo(f"\ntables in {out}; {len(written)} figure(s): " + ", ".join(str(p) for p in written))


@app.command("apply")
def apply_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    editor: str = typer.Option("grace", "--editor", "-e"),
    fixes: Path | None = typer.Option(
        None, "--fixes", help="JSONL of fixes: EditCase or {prompt|intent|code, target}"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="artifact directory to write"),
    load: Path | None = typer.Option(None, "--load", help="artifact directory to load"),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="generate from this prompt (repeatable)"),
    task: str = typer.Option("cnle", "--task", help="template for bare prompts: cnle (intent) / csne (code)"),
    preset: str | None = typer.Option(None, "--preset"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Apply fixes and save them as an artifact (--fixes --out), or load one and generate (--load --prompt)."""
    if (fixes is None) == (load is None):
        raise _fail("give either --fixes FILE --out DIR (make an artifact) or --load DIR --prompt TEXT")
    if fixes is not None and out is None:
        raise _fail("--fixes needs --out DIR for the artifact")
    if load is not None and not prompt:
        raise _fail("--load needs at least one --prompt")
    from clmedit.run.artifact import as_prompt, load_artifact, read_fixes, save_artifact
    from clmedit.run.runner import load_model_for

    try:
        m, tok = load_model_for(model, device)
        if fixes is not None:
            from clmedit.config import preset_for_model
            from clmedit.editors.base import get_editor

            ed = get_editor(editor, preset=preset or (model if preset_for_model(model) else None))
            save_artifact(m, tok, ed, read_fixes(fixes, task), out, model)
            typer.echo(f"artifact written to {out}")
        else:
            manifest = load_artifact(m, tok, load)
            typer.echo(f"loaded {manifest['editor']} edit of {manifest['fixes']} fix(es) from {load}")
    except _user_errors() as err:
        raise _fail(str(err)) from None
    if prompt:
        from clmedit.eval.generate import generate

        texts = [as_prompt(p, task) for p in prompt]
        for text, answer in zip(texts, generate(m, tok, texts, max_new_tokens=max_new_tokens)):
            typer.echo(f"{text} {answer.strip()}")


# --- stats (room: locate) ------------------------------------------------------------------------


# --- train (room: trained editors) ---------------------------------------------------------------


@app.command("editors")
def list_editors() -> None:
    """List the registered editors."""
    from clmedit.editors.base import editor_names

    for name in editor_names():
        typer.echo(name)


if __name__ == "__main__":
    app()
