"""Each generation metric against its reference implementation on fixed fixtures, plus hand-computed values."""

import gzip
import re
from pathlib import Path

import pytest

from tunesmith.errors import ConfigError
from tunesmith.eval import metrics
from tunesmith.eval.wordnet import LEXNAMES, SYSTEM_WORDNET, WordNetMissing, install_wordnet, lexnames_text

PREDICTIONS = ["The cat sat on the mat.", "He bought three apples\nand left the shop.", "Totally unrelated words",
               "Paris is the capital of France.", "Then he left the store.\nHe bought 3 apples."]
REFERENCES = ["A cat was sitting on the mat.", "He bought 3 apples.\nThen he left the store.",
              "The meeting moved to Tuesday.", "Paris is the capital of France.",
              "He bought 3 apples.\nThen he left the store."]
needs_wordnet = pytest.mark.skipif(not (SYSTEM_WORDNET / "data.noun").is_file(),
                                   reason="WordNet 3.0 (Debian wordnet-base) is not installed")


def test_rouge_matches_rouge_score_with_stemming_and_lsum_on_newlines():
    from rouge_score import rouge_scorer

    names = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(names, use_stemmer=True)
    expected = {n: sum(scorer.score(r, p)[n].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)) / 5 for n in names}
    got = metrics.compute(names, PREDICTIONS, REFERENCES)
    assert got == pytest.approx({n: expected[n] for n in names}, abs=1e-6)
    # Lsum differs from L because the last pair has its two sentences (split by "\n") swapped.
    assert got["rougeLsum"] != got["rougeL"]
    assert metrics.compute(["rouge1"], ["the cat"], ["the cat"]) == {"rouge1": 1.0}


def test_rouge_with_several_references_takes_the_best_one():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = ["Nothing alike here.", "The cat sat on a mat."]
    best = max(scorer.score(r, PREDICTIONS[0])["rougeL"].fmeasure for r in refs)
    assert metrics.compute(["rougeL"], PREDICTIONS[:1], [refs])["rougeL"] == round(best, 6)
    assert best > scorer.score(refs[0], PREDICTIONS[0])["rougeL"].fmeasure


def test_bleu_and_chrf_match_sacrebleu_corpus_scores_divided_by_100():
    import sacrebleu

    got = metrics.compute(["bleu", "chrf"], PREDICTIONS, REFERENCES)
    assert got["bleu"] == round(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100, 6)
    assert got["chrf"] == round(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score / 100, 6)
    assert 0 < got["bleu"] < 1 and 0 < got["chrf"] < 1
    assert metrics.compute(["bleu", "chrf"], ["a b c d e"], ["a b c d e"]) == {"bleu": 1.0, "chrf": 1.0}


def test_bleu_with_a_variable_number_of_references_per_example():
    import sacrebleu

    refs = [[REFERENCES[0], "The cat sat on the mat."]] + [[r] for r in REFERENCES[1:]]
    streams = [[r[0] for r in refs], ["The cat sat on the mat.", None, None, None, None]]
    got = metrics.compute(["bleu", "chrf"], PREDICTIONS, refs)
    assert got["bleu"] == round(sacrebleu.corpus_bleu(PREDICTIONS, streams).score / 100, 6)
    assert got["chrf"] == round(sacrebleu.corpus_chrf(PREDICTIONS, streams).score / 100, 6)
    assert got["bleu"] > metrics.compute(["bleu"], PREDICTIONS, REFERENCES)["bleu"]  # the extra reference helps


def test_exact_match_normalizes_whitespace_and_case_and_accepts_any_reference():
    got = metrics.compute(["exact_match"], ["  paris IS the capital\nof france. ", "no"], [REFERENCES[3], ["x", "No"]])
    assert got == {"exact_match": 1.0}
    assert metrics.compute(["exact_match"], ["a", "b"], ["a", "c"]) == {"exact_match": 0.5}


def test_unknown_metric_is_a_config_error_listing_the_valid_names():
    with pytest.raises(ConfigError) as caught:
        metrics.compute(["rougeL", "blue"], PREDICTIONS, REFERENCES)
    text = caught.value.render()
    assert "'blue'" in text and "meteor" in text and "perplexity" in text and "chrf" in text


def test_model_metrics_are_valid_names_but_not_computed_from_text():
    assert metrics.compute(["rougeL", "perplexity", "token_accuracy"], PREDICTIONS, REFERENCES).keys() == {"rougeL"}


def test_lexnames_table_matches_the_installed_man_page():
    page = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if not page.is_file():
        pytest.skip("the lexnames(5WN) man page (Debian wordnet-base) is not installed")
    rows = re.findall(r"^(\d\d)\t(\S+)\s*\t", gzip.decompress(page.read_bytes()).decode(), re.M)
    assert [(f"{i:02d}", name) for i, name in enumerate(LEXNAMES)] == rows
    assert len(rows) == 45
    assert lexnames_text().splitlines()[44] == "44\tadj.ppl\t3"
    assert lexnames_text().splitlines()[3] == "03\tnoun.Tops\t1"


@needs_wordnet
def test_meteor_matches_nltk_and_uses_wordnet_synonyms_offline():
    from nltk.translate.meteor_score import meteor_score

    from tunesmith.eval.wordnet import wordnet_reader

    wordnet = wordnet_reader()
    assert wordnet.synsets("car")[0].name() == "car.n.01"
    expected = [meteor_score([metrics.meteor_tokens(r)], metrics.meteor_tokens(p), wordnet=wordnet)
                for p, r in zip(PREDICTIONS, REFERENCES)]
    expected_mean = sum(expected) / 5
    assert metrics.compute(["meteor"], PREDICTIONS, REFERENCES) == pytest.approx({"meteor": expected_mean}, abs=1e-6)
    # The synonym stage: "auto" matches "car" through WordNet, "banana" matches nothing. (NLTK looks synonyms up
    # for the Porter stems the stem stage leaves behind, so "automobile" -> "automobil" would find none.)
    synonym = metrics.compute(["meteor"], ["the auto is red"], ["the car is red"])["meteor"]
    unrelated = metrics.compute(["meteor"], ["the banana is red"], ["the car is red"])["meteor"]
    assert synonym > unrelated
    # Hand-computed: identical 6-token strings give one chunk of 6 matches: fmean 1, penalty 0.5 * (1/6)^3.
    same = metrics.compute(["meteor"], ["the cat sat on the mat"], ["the cat sat on the mat"])["meteor"]
    assert same == pytest.approx(1 - 0.5 / 216, abs=1e-6)
    # Several references: the best one counts.
    multi = metrics.compute(["meteor"], ["the car is red"], [["a banana", "the car is red"]])["meteor"]
    assert multi == pytest.approx(1 - 0.5 / 64, abs=1e-6)


@needs_wordnet
def test_wordnet_copy_has_lexnames_and_sits_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    target = install_wordnet()
    assert target == tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert (target / "lexnames").read_text() == lexnames_text() and (target / "data.noun").is_file()
    assert install_wordnet() == target  # second call: nothing to do


def test_missing_wordnet_names_the_debian_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WordNetMissing) as caught:
        install_wordnet(tmp_path / "no-wordnet")
    assert "wordnet-base" in caught.value.render() and "wordnet-sense-index" in caught.value.render()
    assert not (tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet").exists()


def test_per_example_scores_rank_examples():
    scores = metrics.per_example(["rougeL"], PREDICTIONS, REFERENCES)
    assert scores["rougeL"][3] == 1.0 and scores["rougeL"][2] < scores["rougeL"][0]
    assert "meteor" not in scores


def test_meteor_without_wordnet_is_left_out_under_auto_and_an_error_when_asked_for(monkeypatch):
    from tunesmith.config import load_config
    from tunesmith.eval import wordnet
    from tunesmith.eval.evaluate import metric_names

    def missing():
        raise WordNetMissing("METEOR needs WordNet 3.0", "install wordnet-base and wordnet-sense-index")

    monkeypatch.setattr(wordnet, "wordnet_reader", missing)
    names, unavailable = metric_names(load_config(raw={}))
    assert "meteor" not in names and "rougeL" in names and "wordnet-base" in unavailable["meteor"]
    with pytest.raises(WordNetMissing):
        metric_names(load_config(raw={"eval": {"metrics": ["rougeL", "meteor"]}}))
    with pytest.raises(ConfigError, match="valid|choose"):
        metric_names(load_config(raw={"eval": {"metrics": ["rougeL", "accuracy"]}}))


def test_a_references_column_adds_alternative_answers():
    from tunesmith.data.formats import Example
    from tunesmith.eval.evaluate import references_of

    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert references_of(Example(messages, "f", 1)) == ["a"]
    assert references_of(Example(messages, "f", 1, {"references": ["a", "b", "", 3]})) == ["a", "b"]
