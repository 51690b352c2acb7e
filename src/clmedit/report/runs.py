"""`clmedit report` over run folders: Table IV-style tables, the lifelong checkpoint table, figures.

Read from the folders' `summary.json` files only, written only inside `out` (a folder holding
anything but what a report writes is the user's and is refused).
"""

from __future__ import annotations

from pathlib import Path

from clmedit.errors import InputError
from clmedit.files import atomic_write_text
from clmedit.outputs import check_output_dir, foreign_entries
from clmedit.report.sequential import is_sequential, render_checkpoints, sequential_figures
from clmedit.report.tables import render_latex, render_markdown
from clmedit.results import load_summaries


def is_report_file(p: Path) -> bool:
    """A name `clmedit report` writes (tables and figures)."""
    return p.name in ("table.md", "table.tex", "sequential.md") or p.suffix == ".png"


def write_report(run_dirs: list[Path], out: Path | None = None, figures: bool = True) -> tuple[str, Path, list[Path]]:
    """Write the tables (and figures) of the runs under `run_dirs` into `out` (default: the first
    folder's `report/`); returns (the tables as Markdown, the folder, the figures written)."""
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
    check_output_dir(out, run_dirs, lambda n: is_report_file(Path(n)),
                     ours=lambda p: not foreign_entries(p, is_report_file))  # fmt: skip
    if summaries or not lifelong:
        atomic_write_text(out / "table.md", markdown + "\n")
        atomic_write_text(out / "table.tex", latex + "\n")
    if sequential_md is not None:
        atomic_write_text(out / "sequential.md", sequential_md + "\n")
        markdown = "\n\n".join(m for m in (markdown if summaries else "", sequential_md) if m)
    written: list[Path] = []
    if figures:
        from clmedit.report.figures import all_figures

        written = all_figures(summaries, out) + sequential_figures(lifelong, out)
    return markdown, out, written
