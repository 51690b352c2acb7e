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
    from clmedit.files import regular_file
    from clmedit.outputs import check_output_dir
    from clmedit.run.artifact import FIX_FILES, is_fix_file, load_artifact, read_manifest, save_artifact
    from clmedit.run.checks import check_device, check_out_dir
    from clmedit.run.fixes import as_prompt, read_fixes
    from clmedit.run.runner import load_model_for, make_editor

    check_device(device)
    if fixes is not None:
        regular_file(fixes, "--fixes")
        out = check_output_dir(out, [fixes], FIX_FILES.__contains__, ours=is_fix_file)
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
    else:
        read_manifest(load)  # a tampered or unreadable manifest is named before the model loads
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


def export_cmd(
    load: Path = typer.Option(..., "--load", help="the fix file to export (made by `clmedit apply --out`)"),
    out: str = typer.Option(..., "--out", "-o", help="a new folder to write"),
    model: str | None = typer.Option(None, "--model", "-m", help="the base model; default: the fix file's"),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
) -> None:
    """Export a fix file: a plain Hugging Face checkpoint for weight editors (FT-L, ROME, MEMIT, PMET,
    AlphaEdit, MALMEN), adapter files for clmedit.load_edited(model, DIR) for GRACE-family and WISE."""
    from clmedit.errors import InputError
    from clmedit.outputs import check_output_dir
    from clmedit.run.artifact import read_manifest
    from clmedit.run.checks import check_device, check_out_dir
    from clmedit.run.export import export_fix
    from clmedit.run.runner import load_model_for

    if not (load / "manifest.json").is_file():
        raise InputError(
            f"--load {load} is not a clmedit fix file (no manifest.json); make one with `clmedit apply --out`"
        )
    out = check_output_dir(out, [load], ours=lambda p: False)  # an export goes to a new or empty folder
    manifest = read_manifest(load)
    check_device(device)
    check_out_dir(out.absolute().parent)  # the folder itself appears only when the export succeeded
    m, tok = load_model_for(model or manifest["model"], device, dtype)
    done = export_fix(m, tok, load, out)
    how = "AutoModelForCausalLM.from_pretrained" if done["kind"] == "checkpoint" else "clmedit.load_edited"
    typer.echo(f"exported the {done['editor']} edit as {done['kind']} files to {out} (load with {how})")
