"""`clmedit serve`: the edited model behind the OpenAI API (room: serving); registered in cli.py."""

from __future__ import annotations

from pathlib import Path

import typer

from clmedit.cli_common import HP_HELP, THREADS_HELP, run_option, set_threads

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve_cmd(
    model: str = run_option("model"),
    load: Path | None = typer.Option(
        None,
        "--load",
        help="fix file to serve and keep up to date (a new or empty folder: start with no fixes)",
    ),
    editor: str | None = typer.Option(
        None, "--editor", "-e", help="editor for new fixes (default grace; a fix file names its own)"
    ),
    trained: Path | None = typer.Option(
        None, "--trained", help="the editor's trained part (`clmedit train --out`)"
    ),
    preset: str | None = run_option("preset"),
    hp: list[str] = typer.Option([], "--hp", help=HP_HELP),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address to bind; other than localhost needs --api-key"
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="CLMEDIT_API_KEY",
        show_default=False,
        help="key every request must send (Bearer)",
    ),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="most new tokens of one answer"),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, help="largest request body"),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="most requests generated together"),
    device: str | None = run_option("device"),
    dtype: str = run_option("dtype"),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Serve MODEL (with the fixes of --load) over the OpenAI API: /v1/completions,
    /v1/chat/completions, /v1/models; add, list and take back fixes at /v1/fixes while it runs."""
    from clmedit.errors import InputError

    if host not in LOCAL_HOSTS and not api_key:
        raise InputError(f"--host {host} serves other machines: give --api-key KEY (or set CLMEDIT_API_KEY)")
    fresh = _check_fix_file(load, trained is not None or bool(hp) or preset is not None)
    try:
        import uvicorn

        from clmedit.serve.app import create_app
    except ModuleNotFoundError as err:
        raise InputError(f"clmedit serve needs {err.name}: pip install 'clmedit[serve]'") from None
    from clmedit.cli_common import parse_hp
    from clmedit.fixes.apply import fix_editor
    from clmedit.run.checks import check_device
    from clmedit.run.setup import load_model_for, make_editor
    from clmedit.serve.schemas import Limits
    from clmedit.serve.store import FixStore

    check_device(device)
    set_threads(threads)
    ed = None
    if fresh:
        ed = fix_editor(editor or "grace", model, preset, parse_hp(hp), trained,
                        f"--editor {editor or 'grace'} makes fixes with its trained part: give --trained DIR")  # fmt: skip
    elif editor is not None:
        ed = make_editor(editor, model, preset, parse_hp(hp))
    m, tok = load_model_for(model, device, dtype)
    store = FixStore.open(m, tok, model, ed, load)
    limits = Limits(max_body_bytes=max_body_bytes, max_tokens=max_tokens)
    app = create_app(store, model, api_key, limits, max_batch)
    typer.echo(f"serving {model} with {len(store.cases)} fix(es) at http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _check_fix_file(load: Path | None, settings: bool) -> bool:
    """Whether the server starts a new fix file (else it serves `load`'s); `settings`: --trained,
    --preset or --hp were given (for new fixes only). Refuses a --load folder holding other files."""
    from clmedit.errors import InputError

    if load is not None and load.exists() and not load.is_dir():
        raise InputError(f"--load {load} is a file; give a fix file's folder (or a new folder)")
    if load is not None and load.is_dir():
        from clmedit.fixes.manifest import FIX_FILES
        from clmedit.outputs import foreign_entries

        other = sorted(p.name for p in foreign_entries(load, lambda p: p.name in FIX_FILES))
        if other:  # every change replaces the folder whole: what else it holds would be lost
            raise InputError(
                f"--load {load} holds {', '.join(other[:3])} besides a fix file; give a fix file's own folder or a new one"
            )
    fresh = load is None or not (load / "manifest.json").is_file()
    if not fresh and settings:
        raise InputError(
            "--trained, --preset and --hp are for new fixes; a fix file carries its editor's settings"
        )
    return fresh
