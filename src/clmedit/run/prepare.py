"""What a run needs before its first edit: the case file, and the unedited model's neighbour answers.

The specificity references have one path and one home. `ensure_base_answers` is the only function
that fills them (the runner calls it before any edit); the answers it computes (greedy 16-token
outputs of the unedited model) live only in `$CLMEDIT_CACHE/answers/<fingerprint>.json`, keyed by
the model's fingerprint (weights, tokenizer, config, generation budget), never by its name or path,
so a model replaced at the same path gets its own answers. A case file holds answers only as data:
the released CLMEEval answers of the study's models, used when the run names a release key
(`answers_from`) or its model's name matches one. Runs of several editors often start together:
the cache write merges into what is on disk at that moment, under a lock, so no run's answers are lost.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from clmedit.data.schema import EditCase
from clmedit.errors import InputError
from clmedit.files import atomic_write_text, cache_root, locked, regular_file

log = logging.getLogger(__name__)

ANSWERS_FORMAT = 1  # bump when the way answers are computed changes (e.g. tokenization), so they rebuild


def resolve_data(spec: str, seed: int = 0) -> Path:
    """A case file path, building the default dataset for 'default:<task>' on first use."""
    if spec.startswith("default:"):
        from clmedit.data.build import default_dataset

        task = spec.split(":", 1)[1]
        if task not in ("cnle", "csne"):
            raise InputError(f"unknown default dataset {spec!r}; use default:cnle or default:csne")
        return Path(default_dataset(task, seed=seed))
    path = Path(spec)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"data file {path} does not exist (or use default:cnle / default:csne)")
    return regular_file(path, "--data")


def answers_fingerprint(model, tok) -> str:
    """The key of a model's cached answers: its fingerprint plus the generation budget, the format,
    and the ids the protocol gives a probe prompt (so a change of tokenization rebuilds them)."""
    from clmedit.eval.protocol import NEIGHBOUR_TOKENS
    from clmedit.models.fingerprint import model_fingerprint
    from clmedit.models.text import prompt_ids

    probe = prompt_ids(tok, "Intent: sort a list\nCode:")
    return model_fingerprint(
        model, tok, neighbour_tokens=NEIGHBOUR_TOKENS, answers_format=ANSWERS_FORMAT, probe_ids=probe
    )


def answers_path(fingerprint: str) -> Path:
    return cache_root() / "answers" / f"{fingerprint}.json"


def _read_answers(path: Path) -> dict[str, str]:
    """Cached answers (prompt -> answer); a missing file is empty, a garbled one is warned about (and
    rebuilt by the next write)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        answers = data["answers"]
        if data.get("format") != ANSWERS_FORMAT or not isinstance(answers, dict):
            raise ValueError(f"format {data.get('format')!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in answers.items()):
            raise ValueError("entries are not prompt -> answer strings")
        return answers
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        log.warning("cached answers %s are unreadable (%s); recomputing them", path, err)
        return {}


def _norm(name: str) -> str:
    """'codellama/CodeLlama-7b-hf' -> 'codellama-7b-hf': the part of a model name a release key matches."""
    return re.sub(r"\.gguf$", "", Path(str(name).rstrip("/")).name, flags=re.IGNORECASE).lower()


def release_key(cases: list[EditCase], model_name: str, answers_from: str | None = None) -> str | None:
    """Which released answers (a key of the case file's `answers`, e.g. 'CodeLlama-7b-hf') to use.

    `answers_from` names it (an error when no case has it); otherwise the released key whose name
    matches the model's (its last path component, case-insensitive). When the data carries released
    answers and none matches, a warning says so and that this model's own answers are computed.
    """
    released = sorted({k for c in cases if c.meta.get("source") == "clmeeval" for n in c.neighbours
                       for k in n.answers})  # fmt: skip
    if answers_from is not None:
        present = {k for c in cases for n in c.neighbours for k in n.answers}
        if answers_from not in present:
            raise InputError(
                f"--answers-from {answers_from!r}: no case has answers under that name "
                f"(the data has: {', '.join(sorted(present)) or 'none'}); pick one of those, or leave "
                f"the option out to compute this model's own answers"
            )
        return answers_from
    match = [k for k in released if _norm(k) == _norm(model_name)]
    if match:
        return match[0]
    if released:
        log.warning(
            "the data carries the release's neighbour answers for %s, but none matches model %r: "
            "computing this model's own answers instead (use --answers-from KEY to use a release's)",
            ", ".join(released), model_name,
        )  # fmt: skip
    return None


def ensure_base_answers(
    model, tok, cases: list[EditCase], answers_from: str | None = None, model_name: str | None = None
) -> int:
    """Fill `n.answers[model_name]` of every neighbour with its specificity reference, before any edit.

    From the release key (see `release_key`) where the data has it, else from this model's
    fingerprint-keyed cache, else computed now with the UNEDITED model and added to the cache.
    Answers a case file holds under the model's own name are not trusted (they may be another
    model's). Cases are changed in memory only. Returns how many answers were computed.
    """
    from clmedit.eval.protocol import fill_base_answers
    from clmedit.models.text import model_name as name_of

    name = model_name or name_of(model)
    key = release_key(cases, name, answers_from)
    todo = []
    for n in (n for c in cases for n in c.neighbours):
        if key is not None and key in n.answers:
            n.answers[name] = n.answers[key]
        else:
            n.answers.pop(name, None)
            todo.append(n)
    if key is not None and todo:
        log.warning("%d neighbour(s) have no %r answer in the data; computing them", len(todo), key)
    if not todo:
        return 0
    path = answers_path(answers_fingerprint(model, tok))
    cached = _read_answers(path)
    for n in todo:
        if n.prompt in cached:
            n.answers[name] = cached[n.prompt]
    filled = fill_base_answers(model, tok, cases, model_name=name)
    if filled:
        new = {n.prompt: n.answers[name] for n in todo}
        try:
            with locked(path):  # merge with answers another run wrote meanwhile
                merged = {**_read_answers(path), **new}
                atomic_write_text(
                    path, json.dumps({"format": ANSWERS_FORMAT, "answers": merged}, ensure_ascii=False)
                )
        except OSError as err:  # a read-only cache: answers are just recomputed next time
            log.warning("could not cache base answers at %s: %s", path, err)
    return filled
