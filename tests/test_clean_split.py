import json
from collections import Counter
from pathlib import Path

from helpers import cli
from tunesmith.data.check import check
from tunesmith.data.clean import CleanOptions, clean
from tunesmith.data.split import split_ratios


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def messy_file(tmp_path: Path) -> Path:
    lines = [
        {"prompt": "Where   is my bill? ", "completion": "<p>In the app &amp; by e-mail.</p>"},  # 1 fixed
        {"prompt": "Where is my bill?", "completion": "<p>In the app &amp; by e-mail.</p>"},  # 2 duplicate of 1
        {"prompt": "Mail me at jo@example.com", "completion": "Done, Jose\u0301."},  # 3 pii, NFC
        {"prompt": "Is the cafÃ© open?", "completion": "Yes, until 6pm."},  # 4 mojibake fixed
        {"prompt": "", "completion": "x"},  # 5 unusable: empty prompt
        {"prompt": "<br/>", "completion": "Nothing to see."},  # 6 empty once HTML is stripped
    ]
    path = tmp_path / "messy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "{broken\n")  # 7 unusable: invalid JSON
    return path


def test_clean_accounts_for_every_row_and_logs_each_removal(tmp_path):
    source = messy_file(tmp_path)
    before = source.read_bytes()
    out = tmp_path / "clean.jsonl"
    result = clean(str(source), out, CleanOptions(redact_pii="mask"))
    assert source.read_bytes() == before  # the input is never edited
    assert result.rows_in == 7 and result.rows_out == 3
    assert result.removed == Counter({"empty_field": 1, "invalid_json": 1, "duplicate": 1,
                                      "empty_after_cleaning": 1})
    kept = rows_of(out)
    assert [r["_source"].rsplit(":", 1)[1] for r in kept] == ["1", "3", "4"]
    assert kept[0]["messages"][0]["content"] == "Where is my bill?"  # single spaces, stripped
    assert kept[0]["messages"][1]["content"] == "In the app & by e-mail."
    assert kept[1]["messages"][0]["content"] == "Mail me at <EMAIL>"
    assert kept[1]["messages"][1]["content"] == "Done, Jos\u00e9."  # NFC
    assert kept[2]["messages"][0]["content"] == "Is the café open?"
    removed = rows_of(tmp_path / "clean.removed.jsonl")
    assert sorted(r["_reason"] for r in removed) == sorted(result.removed.elements())
    broken = next(r for r in removed if r["_reason"] == "invalid_json")
    assert broken["_source"].endswith(":7") and broken["row"] is None
    assert next(r for r in removed if r["_reason"] == "duplicate")["_detail"].endswith(":1, which is kept")
    # The output reads back as canonical chat records.
    assert check(str(out), quality=False).usable == 3


def test_clean_can_drop_pii_rows_and_near_duplicates(tmp_path):
    source = messy_file(tmp_path)
    result = clean(str(source), tmp_path / "o.jsonl", CleanOptions(redact_pii="drop", dedup="near"))
    # Row 2 copies row 1 once normalized: an exact copy is a "duplicate" in near mode too.
    assert result.removed["pii"] == 1 and result.removed["duplicate"] == 1
    assert result.rows_in == result.rows_out + sum(result.removed.values())


def test_clean_cli_prints_the_accounting_and_refuses_to_overwrite_its_input(tmp_path):
    source = messy_file(tmp_path)
    result = cli("data", "clean", source, "-o", tmp_path / "c.jsonl")
    assert result.returncode == 0, result.stderr
    assert "7 rows in = 3 out + 4 removed" in result.stdout
    refused = cli("data", "clean", source, "-o", source)
    assert refused.returncode == 1 and "input" in refused.stderr


def test_split_is_stratified_seeded_and_keeps_near_duplicates_together(tmp_path):
    rows = [{"text": f"question {i} about topic {i % 7} with some words", "label": "a" if i % 4 else "b"}
            for i in range(200)]
    # Three near-identical prompts must not be spread over the splits.
    base = "my phone does not charge when I plug it in at night and the screen stays dark all the time"
    rows += [{"text": base + suffix, "label": "a"} for suffix in ("", " please", " today")]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = check(str(path), task="classification", quality=False).examples
    train, held, test = split_ratios(examples, [0.8, 0.1, 0.1], seed=0)
    assert len(train) + len(held) + len(test) == len(rows)
    assert {e.line for e in train}.isdisjoint({e.line for e in held} | {e.line for e in test})
    for part in (held, test):
        share_b = sum(e.label == "b" for e in part) / len(part)
        assert 0.15 <= share_b <= 0.35  # 25% of the rows are "b", in every split
    homes = {name for name, part in (("train", train), ("eval", held), ("test", test))
             for e in part if e.text.startswith(base)}
    assert len(homes) == 1
    again = split_ratios(examples, [0.8, 0.1, 0.1], seed=0)
    assert [e.line for e in again[1]] == [e.line for e in held]
    assert [e.line for e in split_ratios(examples, [0.8, 0.1, 0.1], seed=1)[1]] != [e.line for e in held]


def test_split_and_stats_cli(tmp_path):
    rows = [{"prompt": f"How do I change plan number {i}?", "completion": f"Go to Plan > Change plan ({i})."}
            for i in range(40)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("data", "split", path, "-o", tmp_path / "splits", "--ratios", "0.8,0.1,0.1")
    assert result.returncode == 0, result.stderr
    assert [len(rows_of(tmp_path / "splits" / f"{n}.jsonl")) for n in ("train", "eval", "test")] == [32, 4, 4]
    assert "leakage check: 0" in result.stdout
    bad = cli("data", "split", path, "-o", tmp_path / "s2", "--ratios", "0.5,0.1")
    assert bad.returncode == 1 and "ratios" in bad.stderr


def test_stats_reports_token_percentiles_labels_and_plots(tmp_path, tiny_llama):
    rows = [{"text": "short ticket " * (1 + i % 5), "label": "billing" if i % 3 else "network"} for i in range(30)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "lengths.png"
    result = cli("data", "stats", path, "--task", "classification", "--model", tiny_llama, "--max-seq-len", "8",
                 "--plot", png, "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["rows"] == 30 and stats["labels"] == {"billing": 20, "network": 10}
    assert stats["tokens"]["total"]["p50"] <= stats["tokens"]["total"]["p90"] <= stats["tokens"]["total"]["max"]
    assert stats["over_max_seq_len"] == sum(1 + i % 5 > 4 for i in range(30)) or stats["over_max_seq_len"] > 0
    assert sum(stats["histogram"]["counts"]) == 30
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
