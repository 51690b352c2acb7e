"""`clmedit apply` and `clmedit export`: fix files (apply fixes, save, load, export) (room: runner).

Registered on the app in cli.py; heavy modules are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from clmedit.cli_common import HP_HELP, parse_hp, run_option


def apply_cmd(
    model: str = run_option("model"),
    editor: str | None = typer.Option(
        None, "--editor", "-e", help="the editor (default grace); with --load, the fix file's editor is used"
    ),
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
    """Apply fixes and save the whole edit as a fix file (--fixes --out), load one and generate
    (--load --prompt), or add fixes to one (--load --fixes --out: a new fix file holding both; the
    loaded edit is not re-applied). A-GRACE, SCOPE and MALMEN apply with --trained DIR; the fix file
    then carries what loading needs (MALMEN's hypernetwork excepted)."""
    from clmedit.data.schema import PROMPT_TEMPLATES
    from clmedit.errors import InputError
    from clmedit.fixes.apply import answers, extend_fix_file, make_fix_file, open_fix_file

    if fixes is None and load is None:
        raise InputError(
            "give --fixes FILE --out DIR (make a fix file), --load DIR --prompt TEXT (use one), "
            "or --load DIR --fixes FILE --out NEW_DIR (add fixes to one)"
        )
    if fixes is not None and out is None:
        raise InputError("--fixes needs --out DIR for the fix file")
    if fixes is None and not prompt:
        raise InputError("--load needs at least one --prompt (or --fixes FILE --out NEW_DIR to add fixes)")
    if task not in PROMPT_TEMPLATES:
        raise InputError(f"--task {task!r} is not a task; use one of {', '.join(sorted(PROMPT_TEMPLATES))}")
    if load is not None and fixes is None and trained is not None:
        raise InputError("--trained is for applying fixes (--fixes); a fix file carries its trained part")
    if load is not None and (preset or hp):
        raise InputError("--preset and --hp make a new fix file; one given with --load keeps its own hparams")
    if load is not None and editor is not None:
        from clmedit.fixes.manifest import read_manifest

        if (has := read_manifest(load)["editor"]) != editor:
            raise InputError(f"--editor {editor}: the fix file {load} holds a {has} edit; leave --editor out")
    if load is not None and fixes is not None:
        m, tok, old, new = extend_fix_file(load, fixes, out, model, task, trained=trained, device=device,
                                           dtype=dtype)  # fmt: skip
        typer.echo(f"fix file written to {out}: {old} fix(es) from {load} and {new} added")
    elif fixes is not None:
        m, tok = make_fix_file(model, editor or "grace", fixes, out, task, trained=trained, preset=preset,
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
