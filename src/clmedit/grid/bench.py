"""`clmedit bench`: the main job on the embedded defaults, one model x editors x default datasets.

The model is loaded once and shared by every run (each run leaves it bitwise unedited); neighbour
answers are computed once per dataset and cached, so the first editor pays for them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from clmedit.errors import InputError
from clmedit.files import atomic_write_text, slug
from clmedit.grid.cell import run
from clmedit.report.tables import render_markdown
from clmedit.run.checks import check_out_dir
from clmedit.run.settings import RunConfig
from clmedit.run.setup import load_model_for, make_editor

log = logging.getLogger(__name__)


def bench_editor_names(spec: str) -> list[str]:
    """'none,ft,grace' -> names (validated); 'all' -> every registered editor that imports and needs no training."""
    from clmedit.editors.base import editor_class, editor_names

    if spec.strip() == "all":
        names = []
        for name in editor_names():
            try:
                if not editor_class(name).trainable:
                    names.append(name)
            except ImportError as err:  # planned but not written yet, or a missing optional extra
                log.info("editor %s skipped: %s", name, err)
        return names
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        editor_class(name)  # an InputError with the list of known editors
    if not names:
        raise InputError("--editors is empty; e.g. --editors none,ft,grace")
    return names


def bench_tasks(spec: str) -> list[str]:
    """'cnle,csne' -> the default datasets to run (validated)."""
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ("cnle", "csne")]
    if unknown or not tasks:
        raise InputError(f"--tasks {spec!r}: use cnle, csne or cnle,csne")
    return tasks


def bench(
    model: str, editors: list[str], tasks: list[str], limit: int, out: str | Path,
    fluency: bool = True, device: str | None = None, overwrite: bool = False, dtype: str = "auto",
    evaluation: str = "reference",
) -> tuple[str, list[dict[str, Any]]]:  # fmt: skip
    """Run every (task, editor) into out/<model>/<task>/<editor>; returns the Markdown table and the summaries."""
    out = check_out_dir(out)
    for editor in editors:  # a bad editor or preset fails before the model loads
        if make_editor(editor, model).trainable:
            raise InputError(
                f"bench runs single edits; run the trainable {editor!r} with `clmedit run --folds 2`"
            )
    m, tok = load_model_for(model, device, dtype)
    summaries = []
    model_dir = out / slug(model.rstrip("/").rsplit("/", 1)[-1])  # a hub id or path: its last part
    for task in tasks:
        for editor in editors:
            config = RunConfig(
                model=model, editor=editor, data=f"default:{task}", out=model_dir / task / editor,
                limit=limit, fluency=fluency, device=device, dtype=dtype, evaluation=evaluation,
            )  # fmt: skip
            log.info("bench: %s on %s (%d cases)", editor, task, limit)
            run_dir = run(config, model=m, tok=tok, overwrite=overwrite)
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
    table = render_markdown(summaries)
    atomic_write_text(out / "table.md", table + "\n")
    return table, summaries
