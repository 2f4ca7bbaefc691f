"""Benchmark of tunesmith.data.dedup on synthetic ~1 KB support tickets, against naive datasketch.

    .venv/bin/python bench/dedup_bench.py [--rows 100000]

Tickets are random sentences over a fixed vocabulary (seeded, so every run sees the same rows); ~5% of rows
are near duplicates of an earlier ticket (1-3 word edits) and ~2% exact copies (half with case, spacing or
punctuation changes that `normalize_for_match` removes). Recall is the share of planted copies that land in
their source's group (for leakage: eval rows copied from train that are flagged). False merges count rows
grouped with a ticket they were not planted from. The baseline is what one writes first with datasketch: a
`MinHash.update` call per shingle and a `MinHashLSH` index, timed on a subset and extrapolated linearly.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections.abc import Sequence

from tunesmith.data.dedup import cross_matches, near_duplicate_groups, normalize_for_match

THRESHOLD, NUM_PERM, SEED = 0.8, 128, 1
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Milo", "Nia"]
SUBJECTS = ["I", "we", "my manager", "our team", "the customer", "my colleague", "the office", "our admin"]
VERBS = ["ordered", "returned", "installed", "updated", "reset", "paid for", "cancelled", "renewed", "opened",
         "configured", "downloaded", "replaced", "shipped", "activated", "registered", "connected", "charged"]
ADJECTIVES = ["new", "old", "wireless", "premium", "basic", "spare", "broken", "refurbished", "second", "yearly",
              "monthly", "blue", "large", "small", "shared", "backup", "default", "portable", "annual", "trial"]
NOUNS = ["router", "laptop", "invoice", "subscription", "account", "password", "printer", "license", "headset",
         "monitor", "charger", "order", "refund", "modem", "keyboard", "phone", "tablet", "plan", "card", "cable",
         "dock", "camera", "speaker", "mouse", "drive", "adapter", "battery", "screen", "app", "update"]
PROBLEMS = ["stopped working", "keeps restarting", "shows an error", "was charged twice", "never arrived",
            "is missing a part", "will not turn on", "logs me out", "runs very slowly", "lost all settings",
            "cannot connect", "was delivered late", "has a cracked case", "freezes at startup", "drops the signal"]
TIMES = ["yesterday", "last week", "this morning", "two days ago", "on Monday", "on Friday", "last month",
         "after the update", "since the move", "every evening", "at noon", "during the call", "overnight"]
ASKS = ["Please send a replacement", "Can you refund the charge", "Could someone call me back",
        "Please escalate this ticket", "How do I fix this", "Can you check my account", "Please cancel the order",
        "Is there a known outage", "Please reset it remotely", "What are my options"]


def sentence(rng: random.Random) -> str:
    noun, other = rng.choice(NOUNS), rng.choice(NOUNS)
    shape = rng.randrange(4)
    if shape == 0:
        return (f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {noun} "
                f"{rng.choice(TIMES)} and now the {other} {rng.choice(PROBLEMS)}.")
    if shape == 1:
        return (f"The {rng.choice(ADJECTIVES)} {noun} {rng.choice(PROBLEMS)} {rng.choice(TIMES)}, "
                f"even after {rng.choice(SUBJECTS)} {rng.choice(VERBS)} the {other}.")
    if shape == 2:
        return f"{rng.choice(ASKS)} for the {rng.choice(ADJECTIVES)} {noun} on order #{rng.randrange(10**6):06d}?"
    return (f"{rng.choice(NAMES)} said the {noun} and the {rng.choice(ADJECTIVES)} {other} "
            f"{rng.choice(PROBLEMS)} {rng.choice(TIMES)}.")


def ticket(rng: random.Random, target_chars: int = 1000) -> str:
    parts = [f"Ticket #{rng.randrange(10**7):07d} from {rng.choice(NAMES)}:"]
    while sum(len(p) + 1 for p in parts) < target_chars:
        parts.append(sentence(rng))
    return " ".join(parts)


def small_edit(rng: random.Random, text: str) -> str:
    """1-3 word edits: at 170 words each edit changes at most 3 of ~168 3-grams, so Jaccard stays >= 0.9."""
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(1, len(words) - 1)
        kind = rng.randrange(3)
        if kind == 0:
            words[i] = rng.choice(NOUNS + ADJECTIVES)
        elif kind == 1:
            del words[i]
        else:
            words.insert(i, rng.choice(NOUNS + ADJECTIVES))
    return " ".join(words)


def variant(rng: random.Random, text: str) -> str:
    """Same normalize_for_match key: changed case, doubled spaces, extra edge punctuation."""
    return rng.choice([text, text.upper(), "  " + text.replace(" ", "  ") + "  ", text.lower() + "!!"])


def make_rows(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Rows and, per row, the row it was planted from (itself for an original ticket)."""
    rng = random.Random(seed)
    rows: list[str] = []
    family: list[int] = []
    for i in range(n):
        roll = rng.random()
        originals = [j for j in range(max(0, i - 50), i) if family[j] == j] if i > 50 else []
        if roll < 0.05 and originals:
            src = rng.choice(originals) if rng.random() < 0.5 else rng.randrange(i)
            rows.append(small_edit(rng, rows[src]))
            family.append(family[src])
        elif roll < 0.07 and originals:
            src = rng.randrange(i)
            rows.append(variant(rng, rows[src]))
            family.append(family[src])
        else:
            rows.append(ticket(rng))
            family.append(i)
    return rows, family


def score_groups(groups: list[list[int]], family: Sequence[int]) -> tuple[float, int]:
    """(recall of planted copies, rows grouped with a different family than their group's first row)."""
    group_of = {i: g[0] for g in groups for i in g}
    planted = [i for i, f in enumerate(family) if f != i]
    found = sum(1 for i in planted if i in group_of and group_of.get(family[i]) == group_of[i])
    false = sum(1 for g in groups for i in g if family[i] != family[g[0]])
    return found / max(len(planted), 1), false


def naive_datasketch(texts: Sequence[str]) -> list[list[int]]:
    """The first version one writes: a Python MinHash.update per shingle, MinHashLSH for candidates."""
    from datasketch import MinHash, MinHashLSH
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    sigs = []
    for i, text in enumerate(texts):
        words = normalize_for_match(text).split()
        grams = [" ".join(words[j:j + 3]) for j in range(len(words) - 2)] if len(words) >= 3 else words
        m = MinHash(num_perm=NUM_PERM, seed=SEED)
        for gram in grams:
            m.update(gram.encode())
        lsh.insert(i, m)
        sigs.append(m)
    edges = [(i, j) for i, m in enumerate(sigs) for j in lsh.query(m) if j > i and m.jaccard(sigs[j]) >= THRESHOLD]
    n = len(texts)
    graph = coo_matrix(([1] * len(edges), ([e[0] for e in edges], [e[1] for e in edges])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    by_label: dict[int, list[int]] = {}
    for i, lab in enumerate(label.tolist()):
        by_label.setdefault(lab, []).append(i)
    return sorted((g for g in by_label.values() if len(g) >= 2), key=lambda g: g[0])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    args = parser.parse_args()

    start = time.perf_counter()
    rows, family = make_rows(args.rows)
    mean_chars = sum(map(len, rows)) / len(rows)
    print(f"generated {len(rows):,} rows of {mean_chars:,.0f} chars on average in {time.perf_counter() - start:.1f} s; "
          f"peak RSS so far {peak_rss_mb():,.0f} MB (the rows themselves, before any dedup)")
    table = []

    start = time.perf_counter()
    groups = near_duplicate_groups(rows, THRESHOLD, NUM_PERM, SEED)
    ours = time.perf_counter() - start
    recall, false = score_groups(groups, family)
    table.append(("tunesmith near_duplicate_groups", len(rows), ours, peak_rss_mb(), f"{recall:.3f}", false))

    split = len(rows) * 9 // 10  # the last 10% are the queries (an eval set), the rest the reference (train)
    start = time.perf_counter()
    matches = cross_matches(rows[:split], rows[split:], THRESHOLD, NUM_PERM, SEED)
    seconds = time.perf_counter() - start
    train_families = set(family[:split])
    leaking = [q for q in range(len(rows) - split) if family[split + q] in train_families]
    flagged = {q: r for q, r, _ in matches}
    recall_leak = sum(1 for q in leaking if q in flagged) / max(len(leaking), 1)
    false_leak = sum(1 for q, r in flagged.items() if family[split + q] != family[r])
    table.append(("tunesmith cross_matches (90% ref, 10% queries)", len(rows), seconds, peak_rss_mb(),
                  f"{recall_leak:.3f}", false_leak))

    subset, sub_family = rows[:args.baseline_rows], family[:args.baseline_rows]
    start = time.perf_counter()
    sub_groups = near_duplicate_groups(subset, THRESHOLD, NUM_PERM, SEED)
    ours_subset = time.perf_counter() - start
    recall, false = score_groups(sub_groups, sub_family)
    table.append(("tunesmith near_duplicate_groups (subset)", len(subset), ours_subset, peak_rss_mb(),
                  f"{recall:.3f}", false))

    start = time.perf_counter()
    naive_groups = naive_datasketch(subset)
    naive = time.perf_counter() - start
    recall, false = score_groups(naive_groups, sub_family)
    table.append(("naive datasketch (subset)", len(subset), naive, peak_rss_mb(), f"{recall:.3f}", false))
    naive_full = naive * len(rows) / len(subset)
    table.append((f"naive datasketch, extrapolated ×{len(rows) / len(subset):g}", len(rows), naive_full,
                  float("nan"), "", ""))

    print("\n| step | rows | seconds | rows/s | peak RSS (MB) | recall | false merges |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, sec, rss, rec, fm in table:
        rss_text = "" if rss != rss else f"{rss:,.0f}"
        print(f"| {name} | {n:,} | {sec:.1f} | {n / sec:,.0f} | {rss_text} | {rec} | {fm} |")
    print(f"\nspeed-up over naive datasketch: {naive_full / ours:.0f}× at {len(rows):,} rows (extrapolated), "
          f"{naive / ours_subset:.0f}× measured on the {len(subset):,}-row subset")


if __name__ == "__main__":
    main()
