"""Exact and near-duplicate texts: `data check` reports them and train/eval leakage, `data clean` keeps one
of each group, `data split` keeps a group on one side of the split.

Exact duplicates share a `normalize_for_match` key. Near duplicates are found the standard way: MinHash
signatures of word 3-gram shingles, LSH banding for candidate pairs, and each candidate pair verified by
its MinHash Jaccard estimate before groups are merged transitively.

Why the MinHash is vectorized here rather than datasketch's `MinHash.update` per shingle: 100,000 rows of
~1 KB are ~170 words each, so ~16.8M shingles; one `update` call costs ~9 µs (a SHA-1 and numpy work on
128 values), ~155 s in all, past the 60 s budget of `data check`. Here each chunk of ~90 rows is hashed in a
few numpy passes (~3 s for the 16.8M shingles × 128 permutations) and Python touches each word once,
through a dict cache: ~11 s end to end on one core (bench/dedup_bench.py). Datasketch still picks the bands.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from tunesmith.errors import ConfigError, DataError

SHINGLE_WORDS = 3
# A word: from its first to its last word character, so punctuation at either edge falls away while
# "don't" and "v2.1" stay whole; a token that is all punctuation ("—", "...") is dropped.
_WORD = re.compile(r"\w(?:\S*\w)?")
# Shingle × permutation products per numpy pass: 2M × 8 B = 16 MB. Measured fastest at ~90 rows of 170 words
# (15k shingles × 128 perms); 400 rows at once ran 2.4× slower, as the buffer falls out of cache.
_CHUNK_PRODUCTS = 2_000_000
# A bucket of m texts costs m(m-1)/2 verifications; 5,000 templated tickets sharing one band would be 12.5M
# pairs per band. Each text is compared with at most this many bucket neighbours instead (a chain of
# verified neighbours still merges the whole group), so a bucket costs at most m × 64.
_MAX_NEIGHBOURS = 64
_VERIFY_CHUNK = 16_384  # pairs per verification step: 16k × 128 perms × 4 B × 2 sides = 16 MB
_U32 = np.uint64(32)


def normalize_for_match(text: str) -> str:
    """Casefolded words joined by single spaces, punctuation stripped at word edges: the exact-duplicate key,
    so "Hello,  world!" and "hello world" are the same row."""
    return " ".join(_WORD.findall(text.casefold()))


def exact_groups(texts: Sequence[str]) -> list[list[int]]:
    """Indices of texts with equal keys, groups of two or more, each sorted, ordered by first index."""
    _, labels = _unique_keys([normalize_for_match(t) for t in texts])
    return _groups(labels)


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128,
                          seed: int = 1) -> list[list[int]]:
    """Indices of texts whose word 3-gram Jaccard similarity is estimated at >= threshold, merged
    transitively; exact duplicates always share a group. Same seed, same groups."""
    from scipy.sparse import coo_matrix  # scipy comes with datasketch; union-find as connected components
    from scipy.sparse.csgraph import connected_components

    bands, rows = _band_params(threshold, num_perm)
    keys, labels = _unique_keys([normalize_for_match(t) for t in texts])
    # The empty key has no shingles, so no Jaccard similarity: empty rows group only as exact duplicates.
    nodes = np.array([u for u, key in enumerate(keys) if key], dtype=np.int64)
    sig = _signatures([keys[u] for u in nodes], num_perm, seed)
    left, right = _bucket_pairs(sig, bands, rows)
    keep = _estimates(sig, left, sig, right) >= threshold
    # Components over unique keys, then spread to rows: identical rows share a key, hence a component.
    n = len(keys)
    edges = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (nodes[left[keep]], nodes[right[keep]])),
                       shape=(n, n))
    _, component = connected_components(edges, directed=False)
    return _groups(component[labels])


def cross_matches(reference: Sequence[str], queries: Sequence[str], threshold: float = 0.8,
                  num_perm: int = 128, seed: int = 1) -> list[tuple[int, int, float]]:
    """(query_index, reference_index, estimated_jaccard) for each query that duplicates a reference text,
    its best match only (ties to the lowest reference index), sorted by query index. Exact is 1.0."""
    bands, rows = _band_params(threshold, num_perm)
    ref_keys, ref_labels = _unique_keys([normalize_for_match(t) for t in reference])
    _, first_row = np.unique(ref_labels, return_index=True)  # labels are 0..len(ref_keys)-1, first seen first
    exact_of = dict(zip(ref_keys, first_row.tolist()))

    matches: dict[int, tuple[int, float]] = {}
    near: dict[str, list[int]] = {}  # a query key not in the reference → the queries that carry it
    for q, text in enumerate(queries):
        key = normalize_for_match(text)
        if key in exact_of:
            matches[q] = (exact_of[key], 1.0)
        elif key:
            near.setdefault(key, []).append(q)

    if near:
        ref_nodes = np.array([u for u, key in enumerate(ref_keys) if key], dtype=np.int64)
        ref_sig = _signatures([ref_keys[u] for u in ref_nodes], num_perm, seed)
        query_sig = _signatures(list(near), num_perm, seed)
        qi, ri = _cross_pairs(ref_sig, query_sig, bands, rows)
        est = _estimates(query_sig, qi, ref_sig, ri)
        ok = est >= threshold
        qi, ref_row, est = qi[ok], first_row[ref_nodes[ri[ok]]], est[ok]
        # Best per query key: highest estimate first, then lowest reference row; keep the first of each key.
        order = np.lexsort((ref_row, -est, qi))
        first = np.ones(len(order), dtype=bool)
        first[1:] = qi[order][1:] != qi[order][:-1]
        query_lists = list(near.values())
        for j in order[first]:
            for q in query_lists[qi[j]]:
                matches[q] = (int(ref_row[j]), float(est[j]))
    return [(q, r, s) for q, (r, s) in sorted(matches.items())]


def _unique_keys(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct keys in first-seen order, and each row's position among them."""
    ids: dict[str, int] = {}
    labels = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=len(keys))
    return list(ids), labels


def _groups(labels: np.ndarray) -> list[list[int]]:
    """Rows sharing a label, groups of two or more: each sorted ascending, groups ordered by first row."""
    order = np.argsort(labels, kind="stable")  # stable: rows stay ascending inside a label
    sorted_labels = labels[order]
    cuts = np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1
    groups = [g.tolist() for g in np.split(order, cuts) if len(g) >= 2]
    return sorted(groups, key=lambda g: g[0])


@lru_cache(maxsize=32)
def _band_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks: the split minimizing the summed false
    positive and false negative probability. 0.8 × 128 perms gives 9 bands × 13 rows: a pair at Jaccard
    0.9 shares some band with probability 1 - (1 - 0.9^13)^9 = 0.93, one at 0.5 with 0.001."""
    if not 0 < threshold < 1:
        raise ConfigError(f"the near-duplicate threshold is {threshold}, it must be between 0 and 1",
                          "use e.g. 0.8 (rows sharing about 80% of their word 3-grams)")
    if num_perm < 2:
        raise ConfigError(f"num_perm is {num_perm}, MinHash needs at least 2 permutations",
                          "use 128 (Jaccard estimates within about ±0.035 at 0.8)")
    try:
        from datasketch import MinHashLSH
    except ImportError as err:
        raise DataError("near-duplicate search needs the datasketch package",
                        "install it: pip install 'datasketch>=1.6'") from err
    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError as err:  # e.g. 0.99 × 128 perms wants a single band of 128 rows, which it refuses
        raise ConfigError(f"cannot band {num_perm} MinHash permutations for threshold {threshold}: {err}",
                          "lower the threshold (0.97 works with 128 permutations) or raise num_perm") from err
    return lsh.b, lsh.r


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers and offsets of the hash family. RandomState, as datasketch uses, because its stream is
    frozen by NumPy's compatibility policy: the same seed gives the same groups on any NumPy version."""
    rng = np.random.RandomState(seed)
    a = rng.randint(0, 2**64, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.randint(0, 2**64, size=num_perm, dtype=np.uint64)
    return a[:, None], b[:, None]


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads every input bit over all 64 output bits (uint64 wraps, on purpose)."""
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def _word_hash(word: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and groups must not change between runs.
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def _shingle_hashes(keys: list[str], cache: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of each key's word 3-grams (of its words when it has fewer than 3), concatenated, and
    the number per key. Each distinct word is hashed once; the 3-grams are combined in numpy."""
    words: list[str] = []
    lens = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        split = key.split(" ")
        words += split
        lens[i] = len(split)
    hashes = list(map(cache.get, words))
    if None in hashes:
        for word in set(words).difference(cache):
            cache[word] = _word_hash(word)
        hashes = list(map(cache.__getitem__, words))
    word_hash = np.array(hashes + [0] * (SHINGLE_WORDS - 1), dtype=np.uint64)

    with np.errstate(over="ignore"):
        # The 3-gram starting at every word, in three contiguous passes. Distinct odd multipliers make it
        # order-sensitive: "not working now" ≠ "now working not".
        gram = (word_hash[:-2] * np.uint64(0x9E3779B97F4A7C15) + word_hash[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F)
                + word_hash[2:])
    ends = np.cumsum(lens)
    short = lens < SHINGLE_WORDS
    # A key of 170 words has 168 3-grams: the two starting at its last two words run into the next key.
    valid = np.ones(len(gram), dtype=bool)
    valid[ends[~short] - 1] = False
    valid[ends[~short] - 2] = False
    if short.any():  # a key of one or two words: its words are its shingles
        short_word = np.repeat(short, lens)
        gram[short_word] = word_hash[:-2][short_word]
    counts = np.where(short, lens, lens - (SHINGLE_WORDS - 1))
    return _mix64(gram[valid]) >> _U32, counts


def _signatures(keys: list[str], num_perm: int, seed: int, cache: dict[str, int] | None = None) -> np.ndarray:
    """MinHash signature per non-empty key, (len(keys), num_perm) uint32.

    Permutation i is h_i(x) = ((a_i·x + b_i) mod 2^64) >> 32 over 32-bit shingle hashes x, with random
    64-bit a_i (made odd) and b_i: Dietzfelbinger's multiply-add-shift, a strongly universal family (the role
    datasketch's (a·x + b) mod (2^61 - 1) plays) whose modulo is uint64 wrap-around, free. The shift is
    monotone, so it is applied after the minimum: three numpy passes per chunk (multiply, add, min by key)."""
    a, b = _permutations(num_perm, seed)
    sig = np.empty((len(keys), num_perm), dtype=np.uint32)
    cache = {} if cache is None else cache
    per_chunk = max(1, _CHUNK_PRODUCTS // (num_perm * 170))  # ~170 words is a 1 KB row
    for lo in range(0, len(keys), per_chunk):
        x, counts = _shingle_hashes(keys[lo:lo + per_chunk], cache)
        offsets = np.cumsum(counts) - counts
        # A chunk holding a very long text still keeps its products near _CHUNK_PRODUCTS: fewer perms at once.
        step = max(1, _CHUNK_PRODUCTS // len(x))
        for p in range(0, num_perm, step):
            with np.errstate(over="ignore"):
                products = a[p:p + step] * x[None, :]
                products += b[p:p + step]
            low = np.minimum.reduceat(products, offsets, axis=1)
            sig[lo:lo + per_chunk, p:p + step] = (low >> _U32).T
    return sig


def _band_hashes(sig: np.ndarray, bands: int, rows: int) -> list[np.ndarray]:
    """One 64-bit hash per signature and band. Two texts share a bucket when their hashes are equal; a rare
    64-bit collision only adds a candidate, which verification then drops."""
    out = []
    for band in range(bands):
        h = np.zeros(len(sig), dtype=np.uint64)
        for col in range(band * rows, (band + 1) * rows):
            h = _mix64(h ^ sig[:, col])
        out.append(h)
    return out


def _bucket_pairs(sig: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (i, j), i < j, of signatures sharing some band bucket, each i paired with at most
    _MAX_NEIGHBOURS bucket neighbours per band."""
    codes = []
    n = len(sig)
    for h in _band_hashes(sig, bands, rows):
        order = np.argsort(h, kind="stable")  # ascending indices inside a bucket, so i < j below
        h = h[order]
        for d in range(1, _MAX_NEIGHBOURS + 1):
            same = h[d:] == h[:-d]
            if not same.any():  # no bucket holds more than d texts
                break
            codes.append(order[:-d][same] * n + order[d:][same])
    code = np.unique(np.concatenate(codes)) if codes else np.empty(0, dtype=np.int64)
    return code // max(n, 1), code % max(n, 1)


def _cross_pairs(ref_sig: np.ndarray, query_sig: np.ndarray, bands: int,
                 rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (query, reference) signature pairs sharing some band bucket, at most _MAX_NEIGHBOURS
    references per query and band (the lowest-indexed ones)."""
    codes = []
    n_ref = max(len(ref_sig), 1)
    for ref_h, query_h in zip(_band_hashes(ref_sig, bands, rows), _band_hashes(query_sig, bands, rows)):
        order = np.argsort(ref_h, kind="stable")
        ref_h = ref_h[order]
        lo = np.searchsorted(ref_h, query_h, side="left")
        hits = np.minimum(np.searchsorted(ref_h, query_h, side="right") - lo, _MAX_NEIGHBOURS)
        rank = np.arange(hits.sum()) - np.repeat(np.cumsum(hits) - hits, hits)
        queries = np.repeat(np.arange(len(query_h)), hits)
        codes.append(queries * n_ref + order[np.repeat(lo, hits) + rank])
    code = np.unique(np.concatenate(codes)) if codes else np.empty(0, dtype=np.int64)
    return code // n_ref, code % n_ref


def _estimates(sig_a: np.ndarray, ia: np.ndarray, sig_b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """MinHash Jaccard estimate per pair: the fraction of permutations whose minimum agrees."""
    est = np.empty(len(ia), dtype=np.float64)
    for lo in range(0, len(ia), _VERIFY_CHUNK):
        hi = lo + _VERIFY_CHUNK
        est[lo:hi] = (sig_a[ia[lo:hi]] == sig_b[ib[lo:hi]]).mean(axis=1)
    return est
