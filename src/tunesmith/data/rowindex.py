"""Compact per-row columns for the checks that compare rows with each other (duplicates, near duplicates,
contradictions, leakage), built chunk by chunk while a file streams past, so `data check` and `data clean`
never hold the rows themselves.

What stays in memory per row, whatever its length: file id (2 B), line (4 B), three 64-bit keys (whole row,
prompt, answer: 24 B), two flags (2 B) and the LSH band hashes (9 bands × 8 B = 72 B; 144 B with leakage
bands) — about 104 bytes, so 1M rows cost ~100 MB and 2 GB is reached near 20M rows (a ~20 GB file of 1 KB
rows). The MinHash signatures (128 × 4 B = 512 B a row) go to a temporary file and are read back only for
the candidate pairs that LSH proposes.

Keys are 64-bit BLAKE2b digests of `normalize_for_match` text instead of the text: two different texts
share a key with probability ~N²/2⁶⁵, about 3·10⁻⁸ for 1M rows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from tunesmith.data.dedup import (_MAX_NEIGHBOURS, _band_hashes, _band_params, _estimates, _signatures,
                                  normalize_for_match)
from tunesmith.data.formats import Example

NUM_PERM, THRESHOLD, SEED = 128, 0.8, 1
_WORD_CACHE_LIMIT = 1_000_000  # distinct words remembered between chunks (~100 MB); past it the cache restarts


def text_key(normalized: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest(), "little")


class _Signatures:
    """MinHash signatures appended to a temporary file, read back by row for verification."""

    def __init__(self, folder: str | None):
        handle, self.path = tempfile.mkstemp(prefix=".tunesmith-minhash-", suffix=".u32", dir=folder)
        self._file = os.fdopen(handle, "wb")
        self.rows = 0
        self._view: np.ndarray | None = None

    def append(self, sig: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(sig, dtype=np.uint32).tobytes())
        self.rows += len(sig)

    def view(self) -> np.ndarray:
        if self._view is None:
            self._file.close()
            self._view = (np.memmap(self.path, dtype=np.uint32, mode="r", shape=(self.rows, NUM_PERM))
                          if self.rows else np.empty((0, NUM_PERM), dtype=np.uint32))
        return self._view

    def close(self) -> None:
        self._file.close()
        self._view = None
        Path(self.path).unlink(missing_ok=True)


class RowIndex:
    """Per-row keys and LSH bands. `add` a chunk of examples at a time; `finish` before asking questions."""

    def __init__(self, near: bool = True, prompts: bool = False, folder: str | None = None):
        self.near, self.prompts = near, prompts
        self.bands, self.band_rows = _band_params(THRESHOLD, NUM_PERM)
        self.files: list[str] = []
        self._file_ids: dict[str, int] = {}
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in
                                                      ("file", "line", "held", "whole", "prompt", "answer",
                                                       "words", "prompt_words", "band", "prompt_band")}
        self._cache: dict[str, int] = {}
        self._sig = _Signatures(folder) if near else None
        self._prompt_sig = _Signatures(folder) if near and prompts else None

    def __len__(self) -> int:
        return len(self.line)

    def add(self, examples: list[Example], held: list[bool]) -> None:
        if not examples:
            return
        prompts = [normalize_for_match(e.input_text) for e in examples]
        answers = [normalize_for_match(e.output_text) for e in examples]
        wholes = [f"{p} {a}".strip() for p, a in zip(prompts, answers)]
        ids = [self._file_ids.setdefault(e.file, len(self._file_ids)) for e in examples]
        self.files += list(self._file_ids)[len(self.files):]
        c = self._chunks
        c["file"].append(np.array(ids, dtype=np.int32))
        c["line"].append(np.array([e.line for e in examples], dtype=np.int64))
        c["held"].append(np.array(held, dtype=bool))
        for name, texts in (("whole", wholes), ("prompt", prompts), ("answer", answers)):
            c[name].append(np.fromiter(map(text_key, texts), dtype=np.uint64, count=len(texts)))
        c["words"].append(np.array([bool(w) for w in wholes]))
        c["prompt_words"].append(np.array([bool(p) for p in prompts]))
        if len(self._cache) > _WORD_CACHE_LIMIT:
            self._cache.clear()
        if self._sig is not None:
            sig = _signatures(wholes, NUM_PERM, SEED, self._cache)
            self._sig.append(sig)
            c["band"].append(np.stack(_band_hashes(sig, self.bands, self.band_rows), axis=1))
        if self._prompt_sig is not None:
            sig = _signatures(prompts, NUM_PERM, SEED, self._cache)
            self._prompt_sig.append(sig)
            c["prompt_band"].append(np.stack(_band_hashes(sig, self.bands, self.band_rows), axis=1))

    def finish(self) -> RowIndex:
        empty = {"file": np.int32, "line": np.int64, "held": bool, "whole": np.uint64, "prompt": np.uint64,
                 "answer": np.uint64, "words": bool, "prompt_words": bool}
        for name, chunks in self._chunks.items():
            if chunks:
                value = np.concatenate(chunks)
            elif name in empty:
                value = np.empty(0, dtype=empty[name])
            else:
                value = np.empty((0, self.bands), dtype=np.uint64)
            setattr(self, name, value)
        self._chunks = {}
        return self

    def where(self, row: int) -> str:
        return f"{self.files[self.file[row]]}:{self.line[row]}"

    def close(self) -> None:
        for sig in (self._sig, self._prompt_sig):
            if sig is not None:
                sig.close()

    # -- questions, each over a subset of rows (ascending global indices) -----------------------------------

    def exact_first(self, rows: np.ndarray) -> np.ndarray:
        """For each row, the first row of the subset with the same whole-row key (itself when it is first)."""
        return _first_by_key(self.whole[rows], rows)

    def near_first(self, rows: np.ndarray) -> np.ndarray:
        """For each row, the first row of its near-duplicate group in the subset (itself when it is first).
        Exact copies are in their original's group; rows without words group only as exact copies."""
        exact = self.exact_first(rows)
        if not self.near or len(rows) < 2:
            return exact
        nodes = rows[(exact == rows) & self.words[rows]]  # one representative per distinct key
        sig = self._sig.view()
        left, right = [], []
        for band in range(self.bands):
            i, j = _bucket_neighbours(self.band[nodes, band])
            i, j = nodes[i], nodes[j]
            keep = _estimates(sig, i, sig, j) >= THRESHOLD
            left.append(i[keep])
            right.append(j[keep])
        first = _components_first(np.concatenate(left), np.concatenate(right), nodes)
        # Copies follow their original; the original follows its near-duplicate group.
        if not len(nodes):
            return exact
        position = np.minimum(np.searchsorted(nodes, exact), len(nodes) - 1)
        return np.where(nodes[position] == exact, first[position], exact)

    def contradictions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, first) for each row whose prompt equals an earlier row's but whose answer differs from it."""
        first = _first_by_key(self.prompt[rows], rows)
        differs = (first != rows) & (self.answer[first] != self.answer[rows])
        return rows[differs], first[differs]

    def leaks(self, held: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(held row, train row, similarity) for each held-out row whose prompt repeats a train prompt exactly
        (1.0) or nearly (the MinHash estimate; needs prompts=True); the best train match, lowest row on ties."""
        if not len(held) or not len(train):
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0)
        keys = self.prompt[train]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        at = np.minimum(np.searchsorted(sorted_keys, self.prompt[held]), len(train) - 1)
        exact = sorted_keys[at] == self.prompt[held]
        best_ref = np.where(exact, train[order[at]], -1)
        best_sim = np.where(exact, 1.0, 0.0)
        if self.near and self.prompts:
            sig = self._prompt_sig.view()
            queries = np.flatnonzero(~exact & self.prompt_words[held])
            refs = train[self.prompt_words[train]]
            for band in range(self.bands):
                qi, ri = _cross_neighbours(self.prompt_band[refs, band], self.prompt_band[held[queries], band])
                q, r = queries[qi], refs[ri]
                est = _estimates(sig, held[q], sig, r)
                for k in np.flatnonzero(est >= THRESHOLD):
                    qk, rk, ek = q[k], r[k], est[k]
                    if ek > best_sim[qk] or (ek == best_sim[qk] and rk < best_ref[qk]):
                        best_ref[qk], best_sim[qk] = rk, ek
        found = best_ref >= 0
        return held[found], best_ref[found], best_sim[found]


def _first_by_key(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    order = np.argsort(keys, kind="stable")  # stable: rows stay ascending inside a key
    sorted_keys = keys[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_first = rows[order][starts]
    first = np.empty(len(rows), dtype=np.int64)
    first[order] = np.repeat(group_first, np.diff(np.append(np.flatnonzero(starts), len(order))))
    return first


def _bucket_neighbours(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i, j), i < j, sharing a band hash, each paired with at most _MAX_NEIGHBOURS followers: a
    chain of verified neighbours still joins a whole bucket, at m × 64 verifications instead of m²/2."""
    order = np.argsort(h, kind="stable")
    h = h[order]
    left, right = [], []
    for d in range(1, _MAX_NEIGHBOURS + 1):
        same = h[d:] == h[:-d]
        if not same.any():
            break
        left.append(order[:-d][same])
        right.append(order[d:][same])
    if not left:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(left), np.concatenate(right)


def _cross_neighbours(ref_h: np.ndarray, query_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query position, reference position) pairs sharing a band hash, at most _MAX_NEIGHBOURS per query."""
    order = np.argsort(ref_h, kind="stable")
    ref_h = ref_h[order]
    lo = np.searchsorted(ref_h, query_h, side="left")
    hits = np.minimum(np.searchsorted(ref_h, query_h, side="right") - lo, _MAX_NEIGHBOURS)
    rank = np.arange(hits.sum()) - np.repeat(np.cumsum(hits) - hits, hits)
    return np.repeat(np.arange(len(query_h)), hits), order[np.repeat(lo, hits) + rank]


def _components_first(left: np.ndarray, right: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """For each node (ascending global rows), the smallest node of its connected component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(nodes)
    li, ri = np.searchsorted(nodes, left), np.searchsorted(nodes, right)
    graph = coo_matrix((np.ones(len(li), dtype=np.int8), (li, ri)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(n))
    return nodes[smallest[component]]
