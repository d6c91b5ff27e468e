"""Demonstration retrievers: random, BM25, dense (a sentence encoder, mean pooling), fixed ids.

Each retriever ranks pool examples for each query, most similar first, and returns at most `k` pool indices.
The pool is deduplicated by source text beforehand (peftrun/prompting/build.py), and a pool example whose source
equals the query's is never returned: the query and its exact duplicates are never their own demonstration.
BM25 and dense rankings are cached by content (retriever, encoder, pool and query texts, k) as JSON under
`<cache_dir>/retrieval/`, so the jobs of a sweep that share a pool and queries retrieve once.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.io import atomic_write_json

RETRIEVERS = ("random", "bm25", "dense", "fixed")
CACHE_VERSION = 1
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """BM25's tokens: lower-cased runs of word characters."""
    return _WORD.findall(text.lower())


class BM25:
    """Okapi BM25 (Robertson et al.), k1=1.5, b=0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5))."""

    def __init__(self, documents: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(words(d)) for d in documents]
        self.lengths = [sum(c.values()) for c in self.docs]
        self.avg = sum(self.lengths) / max(len(self.docs), 1) or 1.0
        df: Counter[str] = Counter()
        for doc in self.docs:
            df.update(doc.keys())
        n = len(self.docs)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.postings: dict[str, list[int]] = {}
        for i, doc in enumerate(self.docs):
            for w in doc:
                self.postings.setdefault(w, []).append(i)

    def scores(self, query: str) -> dict[int, float]:
        """Document index -> score, for documents sharing at least one word with the query."""
        out: dict[int, float] = {}
        for w in set(words(query)):
            idf = self.idf.get(w)
            if idf is None:
                continue
            for i in self.postings[w]:
                tf = self.docs[i][w]
                norm = tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg))
                out[i] = out.get(i, 0.0) + idf * norm
        return out


def _top(scores: dict[int, float] | list[float], k: int, banned: set[int], n: int) -> list[int]:
    """The k best indices (ties: lower index first), skipping `banned`; unscored indices rank last."""
    get = scores.get if isinstance(scores, dict) else (lambda i, _d=0.0: scores[i])
    order = sorted(range(n), key=lambda i: (-get(i, float("-inf")), i))
    return [i for i in order if i not in banned][:k]


def rank_pool(retriever: str, queries: list[str], query_keys: list[str], pool: list[str], pool_ids: list[str],
              k: int, seed: int, fixed_ids: list[str], encoder: str, cache_dir: str | None) -> list[list[int]]:
    """Per query, up to k pool indices, most similar first (random: draw order; fixed: the listed order)."""
    same = {}
    for i, text in enumerate(pool):
        same.setdefault(text, set()).add(i)
    banned = [same.get(q, set()) for q in queries]
    if retriever == "random":
        out = []
        for key, ban in zip(query_keys, banned, strict=True):
            rng = random.Random(f"{seed}:{key}")
            allowed = [i for i in range(len(pool)) if i not in ban]
            out.append(rng.sample(allowed, min(k, len(allowed))))
        return out
    if retriever == "fixed":
        where = {pid: i for i, pid in enumerate(pool_ids)}
        missing = [pid for pid in fixed_ids if pid not in where]
        if missing:
            raise PeftrunError(f"prompt.fixed_ids names {missing[:3]}, not in the demonstration pool (train split "
                               f"ids look like {pool_ids[0]!r}); use ids of task.train_split")
        chosen = [where[pid] for pid in fixed_ids]
        return [[i for i in chosen if i not in ban][:k] for ban in banned]
    if retriever not in ("bm25", "dense"):
        raise PeftrunError(f"prompt.retriever={retriever!r}; known: {', '.join(RETRIEVERS)}")
    key = hashlib.sha256(json.dumps([CACHE_VERSION, retriever, str(Path(encoder).expanduser()) if retriever == "dense"
                                     else None, k, pool, queries]).encode()).hexdigest()[:24]
    path = Path(cache_dir).expanduser() / "retrieval" / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cached, list) and len(cached) == len(queries):
                return [[int(i) for i in row] for row in cached]
        except (ValueError, TypeError):
            pass  # a damaged cache file is recomputed and replaced
    if retriever == "bm25":
        index = BM25(pool)
        ranked = [_top(index.scores(q), k, ban, len(pool)) for q, ban in zip(queries, banned, strict=True)]
    else:
        ranked = _dense_rank(queries, pool, k, banned, encoder)
    if path is not None:
        atomic_write_json(path, ranked, indent=None, sort_keys=False)
    return ranked


def _dense_rank(queries: list[str], pool: list[str], k: int, banned: list[set[int]], encoder: str) -> list[list[int]]:
    model_dir = Path(encoder).expanduser()
    if not (model_dir / "config.json").is_file():
        raise PeftrunError(f"prompt.encoder={encoder!r} holds no sentence encoder (config.json); fetch MiniLM with "
                           "../shared/tools/fetch-real-models or use prompt.retriever=bm25")
    pool_vectors = embed(pool, model_dir)
    query_vectors = embed(queries, model_dir)
    sims = (query_vectors @ pool_vectors.T).tolist()
    return [_top(row, k, ban, len(pool)) for row, ban in zip(sims, banned, strict=True)]


def embed(texts: list[str], model_dir: Path, batch_size: int = 32) -> Any:
    """L2-normalised mean-pooled last hidden states (sentence-transformers' all-MiniLM-L6-v2 recipe), (N, D)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 1)
