"""A deliberately broken data set with one instance of each problem class: one finding per problem, at its line."""

import json
from pathlib import Path

import pytest

from conftest import build_tiny_tokenizer
from tunesmith.data.check import check


def chat(user: str, assistant: str | None = "Sure, happy to help with that.", **extra) -> dict:
    messages = [{"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages, **extra}


LONG = ("Our router keeps dropping the connection every evening around seven and the lights on the front "
        "blink orange for a minute before everything comes back, which has happened every single day since "
        "the storm last week and my kids cannot finish their homework online, so please tell me what to do")

# (row, expected (code, field) or None for a clean row); line numbers are the list positions + 1.
ROWS: list[tuple[object, tuple[str, str] | None]] = [
    (chat("What is the capital of France?", "Paris is the capital of France."), None),
    ('{"messages": [', ("invalid_json", "")),
    (["a", "list"], ("not_an_object", "")),
    ({"foo": 1}, ("unknown_format", "")),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
     ("missing_field", "messages[0].content")),
    ({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]},
     ("wrong_type", "messages[0].content")),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
     ("empty_field", "messages[0].content")),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     ("empty_turn", "messages[1].content")),
    ({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     ("unknown_role", "messages[0].role")),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, ("wrong_role_order", "messages")),
    ({"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hello there"}]},
     ("no_assistant_turn", "messages")),
    ({"messages": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "yo", "weight": 2}]},
     ("invalid_weight", "messages[1].weight")),
    ({"messages": [{"role": "user", "content": "Can I pay by card?"},
                   {"role": "assistant", "content": "Yes, any card works."},
                   {"role": "user", "content": "Thanks, and by cash?"}]}, ("trailing_user_turn", "messages")),
    (chat("What is the capital of France?", "Paris is the capital of France."), ("duplicate", "")),
    (chat(LONG, "We will send an engineer to look at the line."), None),
    (chat(LONG.replace("seven", "eight"), "We will send an engineer to look at the line."),
     ("near_duplicate", "")),
    (chat("what is the capital of france", "I could not say, try an atlas or a search engine instead."),
     ("contradiction", "")),
    (chat("Please e-mail the invoice to jane.doe@example.com today."), ("pii_email", "messages[0].content")),
    (chat("You can reach me on +44 20 7946 0958 after five."), ("pii_phone", "messages[0].content")),
    (chat("My card 4111 1111 1111 1111 was charged twice."), ("pii_card", "messages[0].content")),
    (chat("Refund it to GB82 WEST 1234 5698 7654 32 please."), ("pii_iban", "messages[0].content")),
    (chat("The router admin page is at 192.168.1.254 for me."), ("pii_ip", "messages[0].content")),
    (chat("They asked for my SSN, it is 123-45-6789."), ("pii_national_id", "messages[0].content")),
    (chat("Where is my order?", "Your order {{Order Number}} is on its way."),
     ("placeholder", "messages[1].content")),
    (chat("How do I reset it?", "<p>Hold the button for ten seconds.</p>"), ("html", "messages[1].content")),
    (chat("Is the cafÃ© on the ground floor open late?"), ("mojibake", "messages[0].content")),
    (chat("Tell me a long story about roaming. " * 16), ("too_long", "")),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_one_finding_per_problem_class_at_its_line(tmp_path, tokenizer):
    path = tmp_path / "broken.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row, _ in ROWS))
    report = check(str(path), tokenizer=tokenizer, max_seq_len=400)
    got = sorted((f.line, f.code, f.field) for f in report.findings if f.code != "too_few_examples")
    expected = sorted((i + 1, want[0], want[1]) for i, (_, want) in enumerate(ROWS) if want)
    assert got == expected
    assert {f.code for f in report.findings if f.code == "too_few_examples"} == {"too_few_examples"}
    errors = {f.line for f in report.errors}
    assert report.rows == len(ROWS) and report.usable == len(ROWS) - len(errors)
    related = {f.code: f.related_lines for f in report.findings}
    assert related["duplicate"] == [1] and related["contradiction"] == [1] and related["near_duplicate"] == [15]
    assert all(f.fix for f in report.findings)


def test_leakage_from_train_into_a_test_file(tmp_path):
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(chat(f"Question number {i} about my {w} bill?", f"Answer {i}.")) + "\n"
                             for i, w in enumerate(["phone", "data", "roaming", "family"])))
    test.write_text(json.dumps(chat("A brand new question about eSIM?", "Fine.")) + "\n" +
                    json.dumps(chat("Question number 2 about my roaming bill?", "Other answer.")) + "\n")
    report = check([str(train), str(test)])
    leaks = [f for f in report.findings if f.code == "leakage"]
    assert [(f.file, f.line, f.related_lines) for f in leaks] == [(str(test), 2, [3])]
    assert not [f for f in report.findings if f.code in ("duplicate", "contradiction")]


def test_label_problems(tmp_path):
    rows = [{"text": f"ticket {i} about money", "label": "billing"} for i in range(60)]
    rows += [{"text": f"ticket {i} about signal", "label": "network"} for i in range(2)]
    rows += [{"text": "ticket about my bill again", "label": "Billing "}]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = check(str(path), task="classification")
    codes = sorted((f.code, f.line) for f in report.findings if f.code not in ("too_few_examples",
                                                                                "near_duplicate"))
    assert report.format == "text_label"
    assert ("label_variants", 63) in codes and ("label_imbalance", 63) in codes
    assert ("few_examples_for_label", 61) in codes and ("few_examples_for_label", 63) in codes


def test_file_level_problems(tmp_path):
    files = {
        "empty.jsonl": (b"", ["empty_file"]),
        "latin.jsonl": ('{"prompt": "ok", "completion": "fine"}\n{"prompt": "caf\xe9", "completion": "x"}\n'
                        .encode("latin-1"), ["encoding@2"]),
        "bom.jsonl": (b'\xef\xbb\xbf{"prompt": "q", "completion": "a"}\n', ["bom"]),
        "mixed.jsonl": (b'{"prompt": "q", "completion": "a"}\r\n{"prompt": "r", "completion": "b"}\n',
                        ["mixed_newlines"]),
        "header.csv": (b"prompt,completion\n", ["header_only"]),
        "fields.csv": (b'prompt,completion\n"q","a"\n"r","b","extra"\n', ["csv_field_count@3"]),
        "quotes.csv": (b'prompt,completion\n"q","a"\n"broken,"b"x\n', ["invalid_csv@3"]),
        "dupe_header.csv": (b"prompt,prompt\nq,a\n", ["bad_header", "unknown_format@2"]),
    }
    for name, (content, expected) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        report = check(str(path), quality=False)
        got = [f.code if "@" not in want else f"{f.code}@{f.line}"
               for f, want in zip(report.findings, expected)]
        assert got == expected and len(report.findings) == len(expected), (name, report.findings)


def test_real_placeholder_and_intent_counts_in_bitext(shared_data):
    path = shared_data / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    if not path.is_file():
        pytest.skip("bitext not present")
    report = check(str(path), task="classification", columns={"label": "intent"}, quality=False)
    assert (report.rows, report.usable, report.format) == (4514, 4514, "text_label")
    assert len({e.label for e in report.examples}) == 27
    as_generation = check(str(path))
    assert as_generation.mapping == "prompt_completion (prompt ← 'instruction', completion ← 'response')"
    placeholders = [f for f in as_generation.findings if f.code == "placeholder"]
    # 3,036 answers hold placeholders: {{Purchase ID Anonymized}} style, and 92 whose first is a square-bracket
    # one such as [Customer Support Phone Number]; two answers give support@company.com.
    assert len(placeholders) == 3036
    assert sum("'{{" in f.message for f in placeholders) == 3036 - 92
    assert sum("placeholder '[" in f.message for f in placeholders) == 92
    assert {f.field for f in placeholders} == {"messages[1].content"}
    assert [f.code for f in as_generation.findings].count("pii_email") == 2
    assert not as_generation.errors
    # The multi-line quoted answers start on the right physical lines: the second row starts after the first's
    # answer ends, so line numbers grow faster than row numbers.
    assert as_generation.examples[0].line == 2 and as_generation.examples[-1].line > 4514
    assert Path(as_generation.examples[0].file) == path
