"""`clmedit data ...`: build, import and inspect CLMEEval edit cases (room: data).

Heavy modules are imported inside the commands, so `clmedit --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from clmedit.cli_common import check_embedder, fail, user_error_message
from clmedit.run.settings import MAX_SEED

data_app = typer.Typer(no_args_is_help=True, help="Build, import and inspect CLMEEval edit cases.")


def _data_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from clmedit.data.llm import LLMError
    from clmedit.data.schema import CaseFileError
    from clmedit.data.sources import SourceError

    # OSError: also a model name (embedder, tokenizer) that cannot be found or downloaded
    return (SourceError, CaseFileError, LLMError, ValidationError, ValueError, OSError, ImportError)


def _data_exit(err: BaseException) -> typer.Exit:
    return fail(" ".join((user_error_message(err) or str(err)).split()))  # one line


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
    out: str | None = typer.Option(
        None, "--out", "-o", help="JSONL to write (default data/<task>-<source>.jsonl)"
    ),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="at most N edit cases"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED),
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
    from clmedit.data.unprobed import unprobed_path
    from clmedit.outputs import check_output_file, output_path

    label = source.replace("hf:", "hf-").replace("/", "-").replace(":", "-")
    out = output_path(out if out is not None else Path("data") / f"{task}-{label}.jsonl")
    check_embedder(embedder)
    # a file this command built has its statistics beside it: only such a file is rebuilt in place
    out = check_output_file(out, paths or (), ours=stats_path(out).is_file())
    check_output_file(unprobed_path(out), paths or (), ours=stats_path(out).is_file())  # written beside it
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
    typer.echo(f"{len(result.cases)} cases in {out} (statistics in {stats_path(out)}; "
               f"{len(result.unprobed)} inputs no case is scored on in {unprobed_path(out)})")  # fmt: skip


@data_app.command("import-clmeeval")
def data_import_cmd(
    file: Path = typer.Argument(..., help="the released CLMEEval JSON (CNLE or CSNE)"),
    out: str = typer.Option(..., "--out", "-o", help="JSONL to write (a new file)"),
) -> None:
    """Convert the released CLMEEval JSON into our case JSONL (neighbour answers kept per model)."""
    from collections import Counter

    from clmedit.data.clmeeval import read_clmeeval
    from clmedit.data.schema import write_cases
    from clmedit.files import regular_file
    from clmedit.outputs import check_output_file

    if file.exists():
        regular_file(file, "the CLMEEval file")
    out = check_output_file(out, [file])
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
    from clmedit.files import regular_file

    try:
        cases = read_cases(regular_file(file, "case file") if file.exists() else file)
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
