"""Readers and format detection: every file kind, every format, line numbers, column mapping; and properties
that hold for any input: no traceback, every row accounted for."""

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.formats import read_file


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_multiline_quoted_fields_keep_physical_start_lines(tmp_path):
    path = write(tmp_path / "t.csv", 'question,answer\n"Why, exactly?","Because:\nline two\nline three"\n'
                                     'second,"one line"\n')
    examples, findings, mapping, rows = read_file(path)
    assert not findings and rows == 2 and mapping.format == "prompt_completion"
    assert [e.line for e in examples] == [2, 5]
    assert examples[0].reference == "Because:\nline two\nline three"
    assert mapping.columns == {"prompt": "question", "completion": "answer"}


def test_tsv_json_array_and_parquet(tmp_path):
    tsv = write(tmp_path / "t.tsv", "text\tlabel\nmy bill is wrong\tbilling\nno signal\tnetwork\n")
    examples, _, mapping, _ = read_file(tsv, task="classification")
    assert mapping.format == "text_label" and [e.label for e in examples] == ["billing", "network"]

    array = write(tmp_path / "a.json", '[\n  {"prompt": "a", "completion": "b"},\n\n  {"prompt": "c",\n'
                                       '   "completion": "d"}\n]\n')
    examples, findings, _, rows = read_file(array)
    assert rows == 2 and not findings and [e.line for e in examples] == [2, 4]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["Translate", "Sum"], "input": ["chat", "2 2"],
                             "output": ["cat", "4"]}), tmp_path / "p.parquet")
    examples, findings, mapping, rows = read_file(tmp_path / "p.parquet")
    assert mapping.format == "alpaca" and rows == 2 and examples[1].messages[0]["content"] == "Sum\n\n2 2"


def test_sharegpt_multilabel_regression_and_raw_text(tmp_path):
    share = write(tmp_path / "s.jsonl", json.dumps({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}
    ]}) + "\n")
    examples, _, mapping, _ = read_file(share)
    assert mapping.format == "sharegpt" and [m["role"] for m in examples[0].messages] == ["system", "user",
                                                                                          "assistant"]
    multi = write(tmp_path / "m.csv", "text,labels\ncold food and slow service,food|service\n")
    examples, _, mapping, _ = read_file(multi, task="multilabel")
    assert mapping.format == "text_labels" and examples[0].labels == ["food", "service"]
    listed = write(tmp_path / "l.jsonl", json.dumps({"text": "x", "labels": ["a", "b"]}) + "\n")
    assert read_file(listed)[0][0].labels == ["a", "b"]
    scores = write(tmp_path / "r.csv", "sentence,score\ngreat,4.5\nbad,oops\n")
    examples, findings, mapping, _ = read_file(scores, task="regression")
    assert mapping.format == "text_target" and examples[0].target == 4.5
    assert [(f.line, f.code) for f in findings] == [(3, "wrong_type")]
    raw = write(tmp_path / "raw.jsonl", json.dumps({"text": "just some text"}) + "\n")
    assert read_file(raw)[2].format == "text"


def test_column_mapping_and_task_decide_the_reading(tmp_path):
    path = write(tmp_path / "tickets.csv", "ticket,reply,team\nmy phone died,We can repair it.,devices\n")
    examples, findings, mapping, _ = read_file(path, columns={"input": "ticket", "output": "reply"})
    assert mapping.format == "prompt_completion" and examples[0].meta == {"team": "devices"}
    examples, _, mapping, _ = read_file(path, columns={"input": "ticket", "label": "team"}, task="classification")
    assert mapping.format == "text_label" and examples[0].label == "devices"
    assert "input ← 'ticket'" not in mapping.describe() and "text ← 'ticket'" in mapping.describe()


def test_forced_format_rejects_rows_of_another_shape(tmp_path):
    path = write(tmp_path / "f.jsonl", json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    _, findings, _, _ = read_file(path, fmt="chat")
    assert [f.code for f in findings] == ["unknown_format"]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=8)
ROW_LIKE = st.fixed_dictionaries({}, optional={
    "messages": st.lists(st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "x"]),
                                                              "content": JSON_VALUES}), max_size=4),
    "prompt": JSON_VALUES, "completion": JSON_VALUES, "text": JSON_VALUES, "label": JSON_VALUES})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.sampled_from(["jsonl", "json", "csv", "tsv"]))
def test_random_bytes_never_raise_and_every_row_is_accounted_for(tmp_path, data, suffix):
    path = tmp_path / f"random.{suffix}"
    path.write_bytes(data)
    examples, findings, _, rows = read_file(path)
    row_errors = {f.line for f in findings if f.severity == "error"
                  and f.code not in ("empty_file", "header_only", "bad_header")}
    assert len(examples) + len(row_errors) >= rows >= len(examples)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ROW_LIKE | JSON_VALUES, min_size=1, max_size=8), st.integers(0, 40))
def test_wrong_types_and_truncated_json_are_findings_not_tracebacks(tmp_path, rows, cut):
    lines = [json.dumps(r) for r in rows]
    lines[-1] = lines[-1][:max(1, len(lines[-1]) - cut)]  # a truncated last line
    lines.append("x" * 200_000)  # a huge line of garbage
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    examples, findings, _, count = read_file(path)
    errors = {f.line for f in findings if f.severity == "error"}
    assert count == len(lines)
    assert len(examples) + len(errors) == count  # each row is used or has exactly one error
    assert {e.line for e in examples}.isdisjoint(errors)
