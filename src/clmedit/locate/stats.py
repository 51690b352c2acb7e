"""Second-moment statistics of down_proj inputs, computed from code, offline, cached on disk.

    C_l = E[k k^T]  over every token k of the corpus windows,  k = input of down_proj in layer l

MEMIT and PMET weigh their least-squares update by C_l so it disturbs the keys the model sees
most in ordinary text as little as possible. The original work streams Wikipedia (an 18 GB
download); we read code that is already on the machine: by default the Python sources of the
running interpreter's standard library, or any text / JSONL file or folder given by path.

Activations are never held: each batch adds its K^T K (float32) into a float64 sum, and the
forward pass stops right after the highest layer needed. Results are cached under
`$CLMEDIT_CACHE/stats/<model fingerprint>/` keyed by layer, corpus fingerprint, sample count and
window length (a model replaced at the same path or name never reuses another's statistics),
written to a temporary file and renamed, so a reader never sees a half-written file; a file that
cannot be read or validated (truncated, wrong shape, non-finite) is ignored and recomputed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from clmedit.errors import InputError
from clmedit.files import atomic_save_tensors, cache_root, locked
from clmedit.models.arch import arch_of
from clmedit.models.fingerprint import model_fingerprint
from clmedit.models.hooks import TraceDict
from clmedit.models.text import pad_batch

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 1000  # windows of `seq_len` tokens (~256k tokens by default)
DEFAULT_SEQ_LEN = 256
_TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".json", ".jsonl", ".gz", ".js", ".java", ".go", ".c"}
_SKIP_DIRS = {"__pycache__", "test", "tests", "idle_test", "site-packages", ".git"}
_WINDOWS_PER_DOC = 4  # spread the sample over many files rather than exhausting the first ones


# --- corpus -------------------------------------------------------------------------------------
def _walk(root: Path) -> list[Path]:
    """Text files under `root`, sorted, skipping test folders and caches; symlinks not followed."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files) if Path(f).suffix in _TEXT_SUFFIXES]
    return found


def corpus_files(corpus: str | Path | None) -> list[Path]:
    """The files of a corpus: the stdlib's .py files (None), one file, or a folder's text files."""
    if corpus is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        return [p for p in _walk(root) if p.suffix == ".py"]
    path = Path(corpus)
    if path.is_file():
        return [path]
    if path.is_dir():
        return _walk(path)
    raise FileNotFoundError(f"corpus {path} does not exist; give a text/JSONL file or a folder of them")


def corpus_fingerprint(corpus: str | Path | None) -> str:
    """A short hash naming the corpus: file names and sizes (stdlib, folders) or the file's bytes."""
    h = hashlib.sha256()
    if corpus is None:
        h.update(f"stdlib {sys.version_info[:3]}".encode())
    files = corpus_files(corpus)
    if corpus is not None and len(files) == 1:
        with open(files[0], "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    else:
        base = files[0].parent if files else Path()
        for f in files:
            h.update(f"{os.path.relpath(f, base)}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def _documents(path: Path) -> Iterator[str]:
    """Text documents of one file: each JSONL record's text, else the whole file."""
    opener = gzip.open if path.suffix == ".gz" else open
    name = path.name.removesuffix(".gz")
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        if not name.endswith(".jsonl"):
            yield fh.read()
            return
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                text = next(
                    (obj[k] for k in ("text", "content", "code") if isinstance(obj.get(k), str)), None
                )
                text = text or "\n".join(v for v in obj.values() if isinstance(v, str))
                if text:
                    yield text


def token_windows(tok, corpus: str | Path | None, samples: int, seq_len: int) -> Iterator[list[int]]:
    """Up to `samples` windows of <= seq_len token ids (>= 8 tokens), a few per document, in order."""
    produced = 0
    for path in corpus_files(corpus):
        for doc in _documents(path):
            ids = tok(doc, add_special_tokens=False)["input_ids"]
            for w in range(min(_WINDOWS_PER_DOC, -(-len(ids) // seq_len))):
                window = ids[w * seq_len : (w + 1) * seq_len]
                if len(window) < 8:
                    break
                yield window
                produced += 1
                if produced >= samples:
                    return


# --- cache ------------------------------------------------------------------------------------------
def stats_path(model_fp: str, layer: int, fingerprint: str, samples: int, seq_len: int) -> Path:
    """Cache file of one layer's statistics: keyed by the model's fingerprint (weights, tokenizer,
    config; `models.fingerprint`), the layer, the corpus fingerprint, the sample count and window."""
    name = f"layer{layer:03d}-{fingerprint}-n{samples}-t{seq_len}.safetensors"
    return cache_root() / "stats" / model_fp / name


def _load(path: Path, dim: int) -> torch.Tensor | None:
    """C from a cache file, or None when it is missing, unreadable, or not a valid (dim, dim) moment."""
    if not path.is_file():
        return None
    try:
        data = load_file(path)
        total, count = data["mom2_sum"], float(data["count"].item())
        if total.shape != (dim, dim) or count <= 0 or not torch.isfinite(total).all():
            raise ValueError(f"shape {tuple(total.shape)}, count {count}")
    except Exception as err:  # a corrupt or foreign file is recomputed, never trusted
        log.warning("ignoring unreadable statistics cache %s (%s); recomputing", path, err)
        return None
    return (total / count).float()


def _save(path: Path, total: torch.Tensor, count: int) -> None:
    tensors = {"mom2_sum": total.cpu().contiguous(), "count": torch.tensor([count], dtype=torch.float64)}
    atomic_save_tensors(path, tensors)


# --- computation ----------------------------------------------------------------------------------
@torch.no_grad()
def accumulate_mom2(
    model: nn.Module, tok, layers: list[int], corpus: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, batch_size: int = 8,
) -> tuple[dict[int, torch.Tensor], int]:  # fmt: skip
    """sum_k k k^T (float64, (d, d)) per layer and the token count, over the corpus windows."""
    arch = arch_of(model)
    device = next(model.parameters()).device
    paths = {layer: arch.path("down_proj", layer) for layer in layers}
    dim = arch.mlp_dim(model)
    sums = {layer: torch.zeros(dim, dim, dtype=torch.float64, device=device) for layer in layers}
    count = 0
    bar = tqdm(total=samples, desc=f"stats layers {layers}", unit="seq", leave=False)

    def run(batch: list[list[int]]) -> None:
        nonlocal count
        padded = pad_batch(tok, batch, device)
        ids, mask = padded["input_ids"], padded["attention_mask"]
        with TraceDict(model, paths.values(), stop=True, retain_input=True, retain_output=False) as td:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        keep = mask.bool()
        for layer, path in paths.items():
            k = td[path].input[keep].float()  # (tokens, d)
            sums[layer] += (k.T @ k).double()
        count += int(keep.sum())
        bar.update(len(batch))
        bar.set_postfix(tokens=count)

    batch: list[list[int]] = []
    for window in token_windows(tok, corpus, samples, seq_len):
        batch.append(window)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    bar.close()
    if count == 0:
        raise InputError(
            f"corpus {corpus or 'stdlib'} yielded no token windows; give a non-empty text corpus"
        )
    return sums, count


def layer_stats(
    model: nn.Module, tok, layers: list[int], corpus: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, batch_size: int = 8,
) -> dict[int, torch.Tensor]:  # fmt: skip
    """C_l = E[k k^T] (float32, (d_mlp, d_mlp), on the model's device) for each layer, cached on disk.

    Layers found in the cache are read; the others are computed together in one pass and saved.
    """
    arch = arch_of(model)
    device = next(model.parameters()).device
    dim = arch.mlp_dim(model)
    fp, mfp = corpus_fingerprint(corpus), model_fingerprint(model, tok)
    out: dict[int, torch.Tensor] = {}

    def read_cached(wanted: list[int]) -> list[int]:
        for layer in wanted:
            cached = _load(stats_path(mfp, layer, fp, samples, seq_len), dim)
            if cached is not None:
                out[layer] = cached.to(device)
        return [layer for layer in wanted if layer not in out]

    missing = read_cached(layers)
    if not missing:
        return out
    # Processes that need the same statistics (a study's shards, parallel runs) compute them once:
    # the first takes the lock and computes, the others wait and then read its files.
    with locked(stats_path(mfp, min(missing), fp, samples, seq_len)):
        missing = read_cached(missing)
        if missing:
            log.info("computing second-moment statistics for layers %s (%d windows)", missing, samples)
            sums, count = accumulate_mom2(model, tok, missing, corpus, samples, seq_len, batch_size)
            for layer in missing:
                _save(stats_path(mfp, layer, fp, samples, seq_len), sums[layer], count)
                out[layer] = (sums[layer] / count).float()
    return out


def parse_layers(spec: str) -> list[int]:
    """'4-8' -> [4, 5, 6, 7, 8]; '5' -> [5]; '4,6,8' -> [4, 6, 8] (an InputError otherwise)."""
    layers: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or not (hi or lo).isdigit() or int(hi or lo) < int(lo):
            raise InputError(f"--layers {spec!r}: give layer numbers like 4-8, 5 or 4,6,8")
        layers += list(range(int(lo), int(hi or lo) + 1))
    return sorted(set(layers))


def cache_stats(model: nn.Module, tok, layers: list[int], corpus: str | Path | None = None,
                samples: int | None = None, seq_len: int | None = None) -> list[Path]:  # fmt: skip
    """Compute (or find) and cache the statistics of `layers` (the model's own numbers, not rescaled);
    returns their cache files. A layer the model does not have is an InputError."""
    depth = arch_of(model).num_layers(model)
    if layers[-1] >= depth:
        raise InputError(f"--layers: the model has layers 0..{depth - 1}")
    n = samples if samples is not None else DEFAULT_SAMPLES
    t = seq_len if seq_len is not None else DEFAULT_SEQ_LEN
    layer_stats(model, tok, layers, corpus, n, t)
    fp, mfp = corpus_fingerprint(corpus), model_fingerprint(model, tok)
    return [stats_path(mfp, layer, fp, n, t) for layer in layers]
