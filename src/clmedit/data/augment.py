"""More (input, rewritten input) pairs, made the way the build makes generalization inputs.

A key encoder that must map a rewording onto its original learns that from (prompt, rephrase)
pairs; a training split holds one per case. The same offline rewriters the build uses give
more, from any formatted prompt (a training case's neighbours, say):

    CNLE  the intent reworded by rule (`rewrite.reword`: synonyms outside identifiers and literals)
    CSNE  the code with its parameters and locals renamed (`rename.rename_identifiers`, verified
          by the symbol tables), new names mined from the prompts given

Deterministic for a seed. No model, no network.
"""

from __future__ import annotations

import random

from clmedit.data import rename
from clmedit.data.rewrite import reword
from clmedit.data.schema import Task, format_prompt, prompt_input


def rewrite_prompts(task: Task, prompts: list[str], seed: int = 0) -> list[str | None]:
    """A rewrite of each formatted prompt, or None where none exists (not a `task` prompt, nothing
    renamable, or a rewrite equal to the prompt)."""
    raw = [prompt_input(task, p) for p in prompts]
    if task == "csne":
        pool = rename.mine_identifier_pool(r for r in raw if r is not None)
    out: list[str | None] = []
    for i, (prompt, text) in enumerate(zip(prompts, raw)):
        new: str | None = None
        if text is not None and task == "cnle":
            new = format_prompt(task, reword(text))
        elif text is not None:
            renamed = rename.rename_identifiers(text, pool, random.Random(f"{seed}:{i}:{text}"))
            new = format_prompt(task, renamed[0]) if renamed else None
        out.append(new if new != prompt else None)
    return out
