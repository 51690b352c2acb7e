"""`clmedit apply` and `clmedit export`: fix files (apply fixes, save, load, export) (room: runner).

Registered on the app in cli.py; heavy modules are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from clmedit.cli_common import HP_HELP, parse_hp, run_option


def apply_cmd(
    model: str = run_option("model"),
    editor: str = typer.Option("grace", "--editor", "-e"),
    fixes: Path | None = typer.Option(
        None, "--fixes", help="JSONL of fixes: EditCase or {prompt|intent|code, target}"
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="fix file (a directory) to write"),
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
    from clmedit.fixes.apply import answers, make_fix_file, open_fix_file

    if (fixes is None) == (load is None):
        raise InputError("give either --fixes FILE --out DIR (make an artifact) or --load DIR --prompt TEXT")
    if fixes is not None and out is None:
        raise InputError("--fixes needs --out DIR for the artifact")
    if load is not None and not prompt:
        raise InputError("--load needs at least one --prompt")
    if task not in PROMPT_TEMPLATES:
        raise InputError(f"--task {task!r} is not a task; use one of {', '.join(sorted(PROMPT_TEMPLATES))}")
    if load is not None and trained is not None:
        raise InputError("--trained is for making a fix file (--fixes); a fix file carries its trained part")
    if fixes is not None:
        m, tok = make_fix_file(model, editor, fixes, out, task, trained=trained, preset=preset,
                               hparams=parse_hp(hp), device=device, dtype=dtype)  # fmt: skip
        typer.echo(f"fix file written to {out}")
    else:
        m, tok, manifest = open_fix_file(load, model, device, dtype)
        typer.echo(f"loaded {manifest['editor']} edit of {manifest['fixes']} fix(es) from {load}")
    for text, answer in answers(m, tok, prompt, task, max_new_tokens):
        typer.echo(f"{text} {answer}")


def export_cmd(
    load: Path = typer.Option(..., "--load", help="the fix file to export (made by `clmedit apply --out`)"),
    out: str = typer.Option(..., "--out", "-o", help="a new folder to write"),
    model: str | None = typer.Option(None, "--model", "-m", help="the base model; default: the fix file's"),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Export a fix file: a plain Hugging Face checkpoint for weight editors (FT-L, ROME, MEMIT, PMET,
    AlphaEdit, MALMEN), adapter files for clmedit.load_edited(model, DIR) for GRACE-family and WISE."""
    from clmedit.fixes.export import export_fix_file

    done = export_fix_file(load, out, model, device, dtype)
    how = "AutoModelForCausalLM.from_pretrained" if done["kind"] == "checkpoint" else "clmedit.load_edited"
    typer.echo(f"exported the {done['editor']} edit as {done['kind']} files to {done['path']} (load with {how})")
