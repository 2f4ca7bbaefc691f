import json
import re
from pathlib import Path

from conftest import write_jsonl
from helpers import cli
from tunesmith.data.check import check
from tunesmith.data.formats import read_file
from tunesmith.data.split import split

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support"


def test_three_formats_become_the_same_conversation(tmp_path):
    rows = {"chat": {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
            "prompt_completion": {"prompt": "Q", "completion": "A"},
            "alpaca": {"instruction": "Q", "input": "", "output": "A"}}
    for name, row in rows.items():
        examples, findings, mapping, n = read_file(write_jsonl(tmp_path / f"{name}.jsonl", [row]))
        assert mapping.format == name and n == 1 and not findings
        assert examples[0].messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_alpaca_input_is_appended_to_the_instruction(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "chat", "output": "cat"}])
    assert read_file(path)[0][0].messages[0]["content"] == "Translate\n\nchat"


def test_check_reports_each_bad_row_with_line_field_and_fix(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        '{"prompt": "ok", "completion": "fine"}',
        '{"prompt": "broken", "completion": ',
        '{"prompt": "", "completion": "x"}',
        '{"prompt": "q", "completion": 42}',
        '["not", "an", "object"]',
        '{"prompt": "ok", "completion": "fine"}',
    ]) + "\n")
    report = check(str(path))
    by_line = {f.line: f for f in report.findings if f.code != "too_few_examples"}
    assert report.rows == 6 and report.usable == 2 and report.format == "prompt_completion"
    assert by_line[2].code == "invalid_json" and by_line[2].severity == "error"
    assert by_line[3].code == "empty_field" and by_line[3].field == "prompt"
    assert by_line[4].code == "wrong_type" and by_line[4].field == "completion"
    assert by_line[5].code == "not_an_object"
    assert by_line[6].code == "duplicate" and by_line[6].severity == "warning" and by_line[6].related_lines == [1]
    assert all(f.fix for f in report.findings)


def test_chat_rows_with_unknown_roles_or_no_answer_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
    ])
    codes = [(f.line, f.field, f.code) for f in check(str(path), quality=False).findings]
    assert codes == [(1, "messages[0].role", "unknown_role"), (2, "messages", "no_assistant_turn")]


def test_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "latin.jsonl").write_bytes('{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"))
    assert [f.code for f in check(str(tmp_path / "empty.jsonl")).findings] == ["empty_file"]
    assert [f.code for f in check(str(tmp_path / "latin.jsonl")).findings] == ["encoding"]


def test_cli_check_json_and_exit_codes(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "q", "completion": "a"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    ok = cli("data", "check", good, "--json")
    parsed = json.loads(ok.stdout)
    assert ok.returncode == 0 and (parsed["rows"], parsed["usable"], parsed["format"]) == (1, 1, "prompt_completion")
    assert [f["code"] for f in parsed["findings"]] == ["too_few_examples"]
    assert set(parsed["findings"][0]) == {"file", "line", "field", "code", "severity", "message", "fix",
                                          "related_lines"}
    result = cli("data", "check", bad)
    assert result.returncode == 1 and f"{bad}:1" in result.stdout and "completion" in result.stdout


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(50)])
    examples = check(str(path)).examples
    train, held = split(examples, 0.2, seed=3)
    assert not {e.line for e in train} & {e.line for e in held}
    again_train, _ = split(examples, 0.2, seed=3)
    other_train, _ = split(examples, 0.2, seed=4)
    assert len(held) == 10 and len(train) == 40
    assert {e.line for e in train} | {e.line for e in held} == set(range(1, 51))
    assert [e.line for e in train] == [e.line for e in again_train] != [e.line for e in other_train]


def _words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def test_example_dataset_is_big_varied_and_test_questions_do_not_leak():
    report = check([str(EXAMPLE / "train.jsonl"), str(EXAMPLE / "test.jsonl")])
    # No duplicates, leakage, placeholders or personal data; the one phone number is the company's own line.
    assert {f.code for f in report.findings} <= {"pii_phone"}
    assert {f.message for f in report.findings} <= {"phone number '0800 555 0199'"}
    train = check(str(EXAMPLE / "train.jsonl"), quality=False)
    test = check(str(EXAMPLE / "test.jsonl"), quality=False)
    assert train.usable >= 600 and test.usable >= 100
    assert len({e.meta["intent"] for e in train.examples}) >= 15
    train_questions = [_words(e.messages[0]["content"]) for e in train.examples]
    for example in test.examples:
        words = _words(example.messages[0]["content"])
        closest = max(len(words & q) / len(words | q) for q in train_questions)
        assert closest < 0.8, example.messages[0]["content"]
    # Not one template: answers are distinct and their openings vary.
    answers = [e.reference for e in train.examples]
    assert len(set(answers)) >= len(answers) - 2
    assert len({" ".join(a.split()[:3]) for a in answers}) > 300


def test_real_dialogsum_is_read_checked_and_split(tmp_path, shared_data):
    source = shared_data / "dialogsum" / "dialogsum.dev.jsonl"
    if not source.is_file():
        import pytest
        pytest.skip("dialogsum not present")
    report = check(str(source), columns={"input": "dialogue", "output": "summary"})
    assert (report.rows, report.usable, report.format) == (500, 500, "prompt_completion")
    assert report.mapping == "prompt_completion (prompt ← 'dialogue', completion ← 'summary')"
    assert not report.errors
    first = report.examples[0]
    assert first.line == 1 and "#Person1#" in first.messages[0]["content"] and first.meta["topic"]
    result = cli("data", "split", source, "-o", tmp_path, "--column", "input=dialogue", "--column",
                 "output=summary", "--ratios", "0.8,0.1,0.1", "--seed", "7")
    assert result.returncode == 0, result.stderr
    sizes = [len((tmp_path / f"{n}.jsonl").read_text().splitlines()) for n in ("train", "eval", "test")]
    assert sum(sizes) == 500 and sizes[1] == sizes[2] == 50
    assert "leakage check: 0" in result.stdout


def test_python_api_mirrors_the_cli(tmp_path):
    import tunesmith.data

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": "a"}])
    for _ in range(2):  # still the function after the submodule has been imported
        assert tunesmith.data.check(str(path)).usable == 2
    result = tunesmith.data.clean(str(path), tmp_path / "out.jsonl", tunesmith.data.CleanOptions())
    assert (result.rows_in, result.rows_out, dict(result.removed)) == (2, 1, {"duplicate": 1})
