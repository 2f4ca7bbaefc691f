"""Exact and near-duplicate detection (tunesmith.data.dedup). Jaccard values in comments are of word 3-gram
sets: a text of n words has n - 2 of them, and changing one interior word changes 3 (one at the end, 1).
MinHash estimates with 128 permutations have a standard deviation of sqrt(J(1 - J) / 128), ~0.035 at 0.8,
and LSH banding misses some pairs above the threshold, so each pair is placed where its verdict holds for
about 99% of hash seeds or more (checked over 200 seeds), not only for the fixed default one."""

import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.data.dedup import (_band_params, _bucket_pairs, _signatures, cross_matches, exact_groups,
                                  near_duplicate_groups, normalize_for_match)
from tunesmith.errors import ConfigError

# 30 words, 28 3-grams.
TICKET = ("my router stopped working after the firmware update last night and now the wifi light blinks orange "
          "every few seconds even though I restarted it twice and checked every cable")
SAME_TOPIC = [
    "the router firmware update failed halfway and the device now reboots in a loop every few minutes",
    "after updating my router the wifi works but the wired ports stopped working completely last night",
    "is there a way to roll back the firmware on my router because the new version drops connections",
]


def tokens(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(10**6)}" for _ in range(n)]


def tokens_text(n: int, seed: int) -> str:
    return " ".join(tokens(n, seed))


def replaced(words: list[str], positions: list[int], seed: int) -> list[str]:
    out = list(words)
    for pos, new in zip(positions, tokens(len(positions), seed)):
        out[pos] = new
    return out


def test_normalize_for_match_drops_case_spacing_and_edge_punctuation():
    assert normalize_for_match("Hello,  world!") == normalize_for_match("hello world") == "hello world"
    assert normalize_for_match("  (Don't)  STOP...\n\tv2.1 — ok?") == "don't stop v2.1 ok"
    assert normalize_for_match("!!! ...") == ""


def test_exact_groups_match_case_whitespace_and_punctuation_variants():
    texts = ["Reset my password, please!", "Cancel my order", "reset  my password please",
             "RESET MY PASSWORD PLEASE.", "Cancel my order now", "cancel my ORDER?"]
    assert exact_groups(texts) == [[0, 2, 3], [1, 5]]


def test_one_changed_word_is_a_near_duplicate_but_same_topic_texts_are_not():
    words = TICKET.split()
    edited = " ".join(words[:-1] + ["cables"])  # last word: 27 of 29 3-grams shared, Jaccard 0.93
    texts = [TICKET, *SAME_TOPIC, edited]
    assert near_duplicate_groups(texts) == [[0, 4]]
    assert near_duplicate_groups([TICKET, *SAME_TOPIC]) == []


def chain(seed: int = 1) -> list[str]:
    """Four 300-word texts, each 18 words (54 of 298 3-grams) away from the one before: neighbours share 244 of
    352 3-grams (Jaccard 0.69), the two ends only 136 of 460 (0.30). The changed words sit 5 apart, so no
    3-gram holds two of them."""
    texts = [tokens(300, seed)]
    for step in range(3):
        texts.append(replaced(texts[-1], list(range(2 + 5 * step, 270, 15)), seed=seed + 10 + step))
    return [" ".join(words) for words in texts]


def test_groups_merge_transitively():
    # At 0.4 with 256 permutations (42 bands × 6 rows) a 0.69 pair is a candidate with probability 0.998 and
    # its estimate (deviation 0.029) clears 0.4 always; the 0.30 ends stay apart (estimate >= 0.4: 1e-4).
    a, b, c, d = chain()
    kwargs = {"threshold": 0.4, "num_perm": 256}
    assert cross_matches([a], [d], **kwargs) == []
    assert near_duplicate_groups([a, tokens_text(300, seed=99), d, b, c], **kwargs) == [[0, 2, 3, 4]]


def test_lsh_candidates_below_the_threshold_are_dropped():
    # 300 pairs of 100-word texts 11 words apart: 65 of 131 3-grams shared, Jaccard 0.50. At 0.7 (14 bands ×
    # 9 rows) ~8 pairs share a bucket by chance; their estimates (deviation 0.044) never reach 0.7.
    texts = []
    for i in range(300):
        words = tokens(100, seed=1000 + i)
        texts += [" ".join(words), " ".join(replaced(words, list(range(4, 100, 9)), seed=5000 + i))]
    bands, rows = _band_params(0.7, 128)
    left, _ = _bucket_pairs(_signatures(texts, 128, 1), bands, rows)
    assert len(left) > 0  # the premise: LSH alone would have grouped some of them
    assert near_duplicate_groups(texts, threshold=0.7) == []


def test_threshold_is_respected():
    # 40 words; B keeps A's first 28 and ends in 12 new ones: 26 of 50 3-grams shared, Jaccard 0.52.
    a = tokens(40, seed=4)
    b = a[:28] + tokens(12, seed=5)
    texts = [" ".join(a), " ".join(b)]
    assert near_duplicate_groups(texts, threshold=0.8) == []
    # At 0.3 (37 bands × 3 rows) the pair is a candidate with probability 0.996 and its estimate clears 0.3.
    assert near_duplicate_groups(texts, threshold=0.3) == [[0, 1]]


def test_a_bucket_larger_than_the_neighbour_cap_still_forms_one_group():
    # 150 variants of one 60-word text, each with its own last word (57 of 59 3-grams shared, 0.97): every
    # band of every variant lands in the same bucket, far above the 64 neighbours each one is checked against.
    base = tokens(59, seed=6)
    texts = [" ".join(base + [f"end{i}"]) for i in range(150)] + [" ".join(tokens(60, seed=7))]
    assert near_duplicate_groups(texts) == [list(range(150))]


def test_cross_matches_finds_leaked_eval_rows_only():
    train = [SAME_TOPIC[0], "please refund the second charge on my card from last week", TICKET,
             "How do I change the email address on my account?"]
    words = TICKET.split()
    evals = [
        "can I get a discount on the annual plan if I pay for two years upfront",
        " ".join(words[:-1] + ["cables"]),  # train row 2, one word edited: Jaccard 0.93
        "how do I CHANGE the e-mail address on my account",  # a different word: not an exact copy
        "how do i change the email address on my account!!",  # train row 3, exact after normalizing
        SAME_TOPIC[1],
    ]
    matches = cross_matches(train, evals)
    assert [(q, r) for q, r, _ in matches] == [(1, 2), (3, 3)]
    assert 0.8 <= matches[0][2] < 1.0 and abs(matches[0][2] - 27 / 29) < 0.1
    assert matches[1][2] == 1.0


def test_cross_matches_reports_the_best_reference_once_per_query():
    # 100 words. The query changes the last word of `base`: 97 of 99 3-grams shared with it (0.98). `worse`
    # also changes word 50: 94 of 102 (0.92) with the query. Both match; the closer one is reported.
    base = tokens(100, seed=8)
    query = " ".join(base[:-1] + ["changed"])
    worse = " ".join(replaced(base, [50], seed=9))
    matches = cross_matches([worse, " ".join(base), " ".join(base).upper()], [query, " ".join(base) + "!"])
    # The exact match names the first reference row with that key.
    assert [(q, r) for q, r, _ in matches] == [(0, 1), (1, 1)]
    assert matches[0][2] > 0.9 and matches[1][2] == 1.0


def test_same_input_same_output_in_this_and_another_process():
    rng = random.Random(0)
    texts = [" ".join(tokens(rng.randint(30, 60), seed=s)) for s in range(200)]
    # 20 exact copies, then 20 with one word appended: n - 2 of n - 1 3-grams shared, Jaccard >= 0.96.
    texts += [t.upper() for t in texts[:20]] + [t + " extra" for t in texts[20:40]]
    planted = [[i, 200 + i] for i in range(40)]
    assert near_duplicate_groups(texts) == near_duplicate_groups(texts) == planted
    assert near_duplicate_groups(texts, seed=2) == planted
    # Python salts str hashes per process; the estimates must not move with that salt.
    code = ("import sys; from tunesmith.data.dedup import cross_matches; "
            "t = sys.stdin.read().split('\\n'); print(cross_matches(t[:40], t[200:]))")
    outputs = {subprocess.run([sys.executable, "-c", code], input="\n".join(texts), capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": salt}).stdout
               for salt in ("1", "2")}
    assert len(outputs) == 1 and outputs.pop().count("(") == 40


def test_empty_and_one_word_texts():
    texts = ["", "", "Refund", "refund!", "other", "...", "two words", "words two"]
    assert exact_groups(texts) == [[0, 1, 5], [2, 3]]
    # Under 3 words the shingles are the words themselves, so word order no longer tells texts apart.
    assert near_duplicate_groups(texts) == [[0, 1, 5], [2, 3], [6, 7]]
    assert cross_matches(["", "refund"], ["", "REFUND", "refunds", "refund please"]) == [(0, 0, 1.0), (1, 1, 1.0)]
    assert near_duplicate_groups([]) == [] and exact_groups([]) == [] and cross_matches([], ["x"]) == []
    assert cross_matches(["x"], []) == []


@pytest.mark.parametrize("threshold", [0.0, 1.0, 0.995, -0.2])
def test_unusable_threshold_is_a_config_error(threshold):
    with pytest.raises(ConfigError, match="threshold"):
        near_duplicate_groups(["a b c"], threshold=threshold)


WORDS = st.sampled_from(["refund", "order", "router", "wifi", "card", "late", "broken", "help", "the", "my"])
TEXTS = st.builds(lambda words, sep, upper, tail: (sep.join(words).upper() if upper else sep.join(words)) + tail,
                  st.lists(WORDS, max_size=8), st.sampled_from([" ", "  ", "\t", " \n"]), st.booleans(),
                  st.sampled_from(["", "!", "...", " ?"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(TEXTS, max_size=25))
def test_groups_are_in_range_disjoint_sorted_and_contain_exact_groups(texts):
    groups = near_duplicate_groups(texts)
    members = [i for g in groups for i in g]
    assert all(0 <= i < len(texts) for i in members)
    assert len(members) == len(set(members))
    assert all(len(g) >= 2 and g == sorted(g) for g in groups)
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)
    group_of = {i: n for n, g in enumerate(groups) for i in g}
    for exact in exact_groups(texts):
        assert len({group_of.get(i) for i in exact}) == 1 and exact[0] in group_of
