"""The command line: every command is a thin call into the library.

Heavy modules (torch, transformers) are imported inside commands, so `clmedit --help` is instant.
Each section below is owned by one room; keep commands thin.
"""

from __future__ import annotations

import logging

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
