"""CoNaLa readers (CNLE): curated `conala-train.json` (a JSON list), conala-mined(-curated) JSONL,
and any Hugging Face dataset with CoNaLa-like fields (`hf:NAME[:CONFIG]`, needs `datasets`).

input = `rewritten_intent` (falling back to `intent`), output = `snippet`; the original `intent`,
when it differs, is kept as a human-written rephrase candidate.
"""

from __future__ import annotations

import codecs
import gzip
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from clmedit.data.schema import iter_jsonl
from clmedit.data.sources import RawExample, SourceError, collapse


def _text(value: Any) -> str | None:
    return collapse(value) if isinstance(value, str) and value.strip() else None


def conala_example(obj: Any, index: int, skipped: Counter, prefix: str = "conala") -> RawExample | None:
    """One CoNaLa record as a RawExample, or None (reason counted in `skipped`)."""
    if not isinstance(obj, dict):
        skipped["record is not an object"] += 1
        return None
    intent, rewritten = _text(obj.get("intent")), _text(obj.get("rewritten_intent"))
    snippet = obj.get("snippet")
    if intent is None and rewritten is None:
        skipped["missing intent"] += 1
        return None
    if not isinstance(snippet, str) or not snippet.strip():
        skipped["missing snippet"] += 1
        return None
    text = rewritten or intent
    human = intent if rewritten and intent and intent.lower() != rewritten.lower() else None
    qid = obj.get("question_id", obj.get("id"))
    uid = f"{prefix}:{qid}:{index}" if qid is not None else f"{prefix}:{index}"
    meta = {"source": prefix, "question_id": qid, "intent": intent, "rewritten_intent": rewritten}
    split = obj.get("split") if isinstance(obj.get("split"), str) else None
    return RawExample(uid, text, snippet.strip(), human_rephrase=human, split=split, meta=meta)


def _split_from_name(path: Path) -> str | None:
    name = path.name.lower()
    for split in ("train", "valid", "dev", "test"):
        if split in name:
            return "valid" if split == "dev" else split
    return None


def _records(path: Path, skipped: Counter) -> Iterator[Any]:
    """The raw records of a JSON-list or JSONL file (either optionally gzipped)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    except OSError as err:
        raise SourceError(f"{path}: cannot read ({err})") from err
    if head.startswith(b"["):
        try:
            with opener(path, "rb") as fh:
                data = json.loads(fh.read().decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            raise SourceError(f"{path}: not UTF-8 text") from err
        except json.JSONDecodeError as err:
            raise SourceError(f"{path}: looks like a JSON list but does not parse ({err})") from err
        yield from data
    elif head.startswith(b"{"):
        yield from iter_jsonl(path, skipped)
    else:
        raise SourceError(f"{path}: unknown CoNaLa format (expected a JSON list or JSONL of objects)")


def read_conala(paths: str | Path | Iterable[str | Path], skipped: Counter | None = None) -> list[RawExample]:
    """Read CoNaLa files (curated JSON list or mined JSONL). Bad records are skipped and counted."""
    skipped = skipped if skipped is not None else Counter()
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[RawExample] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise SourceError(f"{path}: no such file (expected a CoNaLa JSON or JSONL file)")
        split = _split_from_name(path)
        for i, obj in enumerate(_records(path, skipped)):
            ex = conala_example(obj, len(out) if len(paths) > 1 else i, skipped)
            if ex is not None:
                ex.split = ex.split or split
                ex.meta["path"] = path.name
                out.append(ex)
    if not out:
        raise SourceError(f"{paths[0]}: no usable CoNaLa record (skipped: {dict(skipped)})")
    return out


def load_hf_records(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, record) pairs of a Hugging Face dataset `NAME[:CONFIG]`; needs `datasets` and a network."""
    try:
        import datasets
    except ImportError as err:
        raise SourceError(
            f"hf:{name} needs the `datasets` package: pip install 'clmedit[hf]' (and network access)"
        ) from err
    repo, _, config = name.partition(":")
    try:
        dsets = datasets.load_dataset(repo, config or None)
    except Exception as err:  # network, unknown name, gated repo: all end the same way for the user
        raise SourceError(f"hf:{name}: cannot load ({type(err).__name__}: {err})") from err
    for split, dset in dsets.items():
        for record in dset:
            yield split, record


def read_hf_conala(name: str, skipped: Counter | None = None) -> list[RawExample]:
    """A Hugging Face dataset with CoNaLa fields (intent / rewritten_intent / snippet)."""
    skipped = skipped if skipped is not None else Counter()
    out = []
    for split, record in load_hf_records(name):
        ex = conala_example(record, len(out), skipped, prefix=f"hf:{name}")
        if ex is not None:
            ex.split = "valid" if split == "validation" else split
            out.append(ex)
    if not out:
        raise SourceError(
            f"hf:{name}: no record with CoNaLa fields (intent, snippet); skipped {dict(skipped)}"
        )
    return out
