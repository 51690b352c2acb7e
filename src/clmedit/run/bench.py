"""`clmedit bench`: the main job on the embedded defaults, one model x editors x default datasets.

The model is loaded once and shared by every run (each run leaves it bitwise unedited); neighbour
answers are computed once per dataset and cached, so the first editor pays for them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from clmedit.data.schema import atomic_write_text
from clmedit.report.tables import render_markdown
from clmedit.run.runner import RunConfig, load_model_for, run

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
        editor_class(name)  # KeyError with the list of known editors
    if not names:
        raise ValueError("--editors is empty; e.g. --editors none,ft,grace")
    return names


def bench(
    model: str, editors: list[str], tasks: list[str], limit: int, out: str | Path,
    fluency: bool = True, device: str | None = None, dtype: str = "auto",
) -> str:  # fmt: skip
    """Run every (task, editor) into out/<model>/<task>/<editor>; returns the Markdown table of all."""
    out = Path(out)
    m, tok = load_model_for(model, device, dtype)
    summaries = []
    for task in tasks:
        for editor in editors:
            config = RunConfig(
                model=model, editor=editor, data=f"default:{task}", out=out / _slug(model) / task / editor,
                limit=limit, fluency=fluency, device=device, dtype=dtype,
            )  # fmt: skip
            log.info("bench: %s on %s (%d cases)", editor, task, limit)
            summaries.append(json.loads((run(config, model=m, tok=tok) / "summary.json").read_text()))
    table = render_markdown(summaries)
    atomic_write_text(out / "table.md", table + "\n")
    return table


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text.rstrip("/").rsplit("/", 1)[-1])
