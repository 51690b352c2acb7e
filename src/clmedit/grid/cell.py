"""One configuration's run, whichever kind it is: the one entry `clmedit run`, the grids and the
Ray workers share. A per-case run (`run.runner.run`) or, with `config.sequential`, a lifelong one
(`lifelong.sequence.run_sequential`); both resume and write the same folder files.
"""

from __future__ import annotations

from pathlib import Path

from clmedit.lifelong.sequence import run_sequential
from clmedit.run.runner import run as run_cases
from clmedit.run.settings import RunConfig


def run(config: RunConfig, model=None, tok=None, editor=None, overwrite: bool = False) -> Path:
    """Run `config` (resuming); returns its folder. Arguments as `run.runner.run`'s."""
    if config.sequential is not None:
        return run_sequential(config, model, tok, editor, overwrite)
    return run_cases(config, model, tok, editor, overwrite)
