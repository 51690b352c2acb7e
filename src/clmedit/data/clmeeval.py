"""Reader of the released CLMEEval JSON (the study's benchmark) into our EditCases.

A JSON list; each item is
  CNLE: {case_id, edit_request: {intent, snippet, rewritten_intent},
         neighborhoods: {items: [{intent}, ...], answers: {MODEL_NAME: [str, ...]}}}
  CSNE: {case_id, edit_request: {code, code_doc, code_rewrite},
         neighborhoods: {items: [{code}, ...], answers: {MODEL_NAME: [str, ...]}}}
The released neighbour answers become `Neighbour.answers[MODEL_NAME]` (MODEL_NAME: CodeLlama-7b-hf,
CodeQwen1.5-7B, stable-code-3b), and `meta["source"]` is "clmeeval"; a run uses them as its
specificity references when it names the key (`--answers-from`) or its model's name matches it
(`run.prepare.release_key`). Malformed items are skipped and counted by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from clmedit.data.schema import EditCase, Neighbour, format_prompt
from clmedit.data.sources import SourceError

# task -> (input field, output field, rephrase field, neighbour item field)
FIELDS = {
    "cnle": ("intent", "snippet", "rewritten_intent", "intent"),
    "csne": ("code", "code_doc", "code_rewrite", "code"),
}


def _item_case(item: Any, index: int, skipped: Counter) -> EditCase | None:
    if not isinstance(item, dict) or not isinstance(item.get("edit_request"), dict):
        skipped["item without edit_request"] += 1
        return None
    req = item["edit_request"]
    task = "csne" if "code" in req else "cnle" if "intent" in req else None
    if task is None:
        skipped["edit_request with neither intent nor code"] += 1
        return None
    f_in, f_out, f_re, f_nb = FIELDS[task]
    values = [req.get(f) for f in (f_in, f_out, f_re)]
    if not all(isinstance(v, str) and v.strip() for v in values):
        skipped[f"missing {task} field"] += 1
        return None
    hood = item.get("neighborhoods") or {}
    raw_items = hood.get("items") if isinstance(hood, dict) else None
    if not isinstance(raw_items, list) or not raw_items:
        skipped["missing neighbourhood items"] += 1
        return None
    texts = [n.get(f_nb) if isinstance(n, dict) else n for n in raw_items]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        skipped["malformed neighbourhood item"] += 1
        return None
    neighbours = [Neighbour(prompt=format_prompt(task, t.strip())) for t in texts]
    answers = hood.get("answers") if isinstance(hood.get("answers"), dict) else {}
    for model, outs in answers.items():
        if isinstance(outs, list) and len(outs) == len(neighbours) and all(isinstance(o, str) for o in outs):
            for nb, out in zip(neighbours, outs):
                nb.answers[str(model)] = out
        else:
            skipped["neighbour answers not one string per item"] += 1
    inp, out, rephrase = (v.strip() for v in values)
    return EditCase(
        case_id=str(item.get("case_id", index)),
        task=task,
        prompt=format_prompt(task, inp),
        target=out,
        rephrase=format_prompt(task, rephrase),
        neighbours=neighbours,
        meta={"source": "clmeeval", "raw_input": inp, "rephrase_kind": "clmeeval"},
    )


def read_clmeeval(path: str | Path, skipped: Counter | None = None) -> list[EditCase]:
    """The released CLMEEval JSON (CNLE or CSNE) as EditCases; malformed items skipped and counted."""
    skipped = skipped if skipped is not None else Counter()
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file (expected a CLMEEval JSON list)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"{path}: not a JSON file ({err})") from err
    if isinstance(data, dict):  # tolerate {"data": [...]}-style wrappers
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON list of CLMEEval items")
    cases = [c for i, item in enumerate(data) if (c := _item_case(item, i, skipped)) is not None]
    if not cases:
        raise SourceError(f"{path}: no valid CLMEEval item (skipped: {dict(skipped)})")
    return cases
