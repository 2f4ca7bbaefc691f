"""Regression with several targets: the three input forms and their row problems, per-target normalization and
metrics, and one run on minilm-l6 of examples/reviews_multitarget (train → eval → predict → reload → export →
serve), where each target is a simple function of the text."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package brings
import numpy as np
import pytest
import torch

from conftest import write_jsonl
from helpers import cli
from tunesmith.data.encode import check_known_labels, target_of, task_space
from tunesmith.data.formats import Example, read_file
from tunesmith.errors import ConfigError, DataError
from tunesmith.eval.classification import _prior_outputs, regression_metrics, select, task_metrics
from tunesmith.models.classifier import outputs_from_logits
from tunesmith.train.classify import target_tensor


def _read(path: Path, rows: list, columns=None):
    if path.suffix == ".csv":
        path.write_text("".join(line + "\n" for line in rows))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples, findings, mapping, n = read_file(path, columns=columns, task="regression")
    return examples, {f.line: f for f in findings if f.severity == "error"}, mapping


# ---- the three input forms, and single-target rows as before ----------------------------------------------


def test_list_named_and_column_forms_give_named_targets(tmp_path):
    examples, errors, _ = _read(tmp_path / "list.jsonl", [{"text": "a", "target": [1.5, 3.0]},
                                                          {"text": "b", "target": [2, "4"]}])
    assert not errors and [e.targets for e in examples] == [{"target_0": 1.5, "target_1": 3.0},
                                                            {"target_0": 2.0, "target_1": 4.0}]
    assert all(e.target is None for e in examples)

    # named: every row in the first row's order, whatever order it lists them in
    examples, errors, _ = _read(tmp_path / "named.jsonl", [{"text": "a", "targets": {"quality": 4, "speed": 2}},
                                                           {"text": "b", "targets": {"speed": 1, "quality": 5}}])
    assert not errors and [list(e.targets.items()) for e in examples] == [[("quality", 4.0), ("speed", 2.0)],
                                                                         [("quality", 5.0), ("speed", 1.0)]]
    assert examples[0].to_json()["targets"] == {"quality": 4.0, "speed": 2.0}

    columns = {"input": "review", "target": ["quality", "speed"]}
    examples, errors, mapping = _read(tmp_path / "cols.csv", ["review,quality,speed,shop", "fine,4,2,x",
                                                              "slow,3.5,1,y"], columns)
    assert not errors and [e.targets for e in examples] == [{"quality": 4.0, "speed": 2.0},
                                                            {"quality": 3.5, "speed": 1.0}]
    assert examples[0].text == "fine" and examples[0].meta == {"shop": "x"}
    assert "quality" in mapping.describe() and "speed" in mapping.describe()

    # one bare number per row: read exactly as before (Example.target, no targets, one output named "target")
    examples, errors, _ = _read(tmp_path / "one.jsonl", [{"text": "a", "target": 3}, {"text": "b", "target": 5}])
    assert not errors and [(e.target, e.targets) for e in examples] == [(3.0, None), (5.0, None)]
    space = task_space("regression", examples)
    assert space == {"task": "regression", "names": ["target"], "mean": [4.0], "std": [1.0], "normalize": True}
    assert outputs_from_logits(torch.tensor([[1.0]]), space) == [{"value": 5.0}]


def test_a_list_of_target_columns_is_a_config_key_only_for_target(tmp_path):
    from tunesmith.config import load_config

    raw = {"task": "regression", "data": {"train": "t.csv", "columns": {"input": "review",
                                                                       "target": ["quality", "speed"]}}}
    assert load_config(raw=raw).data.columns["target"] == ["quality", "speed"]
    for columns in ({"label": ["a", "b"]}, {"target": []}, {"target": ["a", "a"]}):
        with pytest.raises(ConfigError, match="only 'target' takes a list"):
            load_config(raw={**raw, "data": {"train": "t.csv", "columns": columns}})


def test_rows_whose_targets_differ_from_the_first_row_are_findings(tmp_path):
    _, errors, _ = _read(tmp_path / "named.jsonl", [
        {"text": "a", "targets": {"quality": 4, "speed": 2}},
        {"text": "b", "targets": {"quality": 4}},                        # 2: speed missing
        {"text": "c", "targets": {"quality": 4, "speed": 2, "cost": 1}},  # 3: an extra target
        {"text": "d", "targets": {"quality": float("inf"), "speed": 2}},  # 4: not finite
        {"text": "e", "targets": {"quality": "high", "speed": 2}},       # 5: not a number
        {"text": "f", "targets": [4, 2]},                                # 6: not named
        {"text": "g", "targets": {"quality": 1, "speed": 2}}])
    found = {line: (f.field, f.code) for line, f in errors.items()}
    assert found == {2: ("targets.speed", "missing_target"), 3: ("targets.cost", "extra_target"),
                     4: ("targets.quality", "invalid_target"), 5: ("targets.quality", "wrong_type"),
                     6: ("targets", "wrong_type")}
    assert errors[2].file.endswith("named.jsonl") and "quality, speed" in errors[2].fix

    _, errors, _ = _read(tmp_path / "list.jsonl", [{"text": "a", "target": [1, 2]}, {"text": "b", "target": [1]},
                                                   {"text": "c", "target": [1, 2, 3]}, {"text": "d", "target": 4},
                                                   {"text": "e", "target": [1, None]}])
    found = {line: (f.field, f.code) for line, f in errors.items()}
    assert found == {2: ("target[1]", "missing_target"), 3: ("target[2]", "extra_target"),
                     4: ("target", "wrong_type"), 5: ("target[1]", "missing_target")}

    columns = {"input": "review", "target": ["quality", "speed"]}
    _, errors, _ = _read(tmp_path / "cols.csv", ["review,quality,speed", "ok,4,2", "empty,,2", "word,4,fast",
                                                 "nan,4,nan"], columns)
    found = {line: (f.field, f.code) for line, f in errors.items()}
    assert found == {3: ("quality", "missing_target"), 4: ("speed", "wrong_type"), 5: ("speed", "invalid_target")}

    # `tunesmith data check` names the file, the line and the field, and fails
    result = cli("data", "check", tmp_path / "named.jsonl", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    reported = {(f["line"], f["field"], f["code"]) for f in json.loads(result.stdout)["findings"]}
    assert {(2, "targets.speed", "missing_target"), (3, "targets.cost", "extra_target")} <= reported
    columns_check = cli("data", "check", tmp_path / "cols.csv", "--column", "input=review",
                        "--column", "target=quality,speed")
    assert "cols.csv:3" in columns_check.stdout and "missing_target" in columns_check.stdout


# ---- targets.json, normalization, metrics ----------------------------------------------------------------


def _ex(text, line=1, **targets):
    return Example(None, "f.jsonl", line, text=text, targets=targets)


def test_per_target_normalization_round_trips():
    quality, speed = [1.0, 2.0, 4.0, 5.0], [100.0, 300.0, 300.0, 500.0]
    rows = [_ex(str(i), quality=q, speed=s) for i, (q, s) in enumerate(zip(quality, speed))]
    space = task_space("regression", rows)
    assert space["names"] == ["quality", "speed"]
    assert space["mean"] == pytest.approx([3.0, 300.0]) and space["std"] == pytest.approx([np.std(quality),
                                                                                          np.std(speed)])
    targets = [target_of(e, space) for e in rows]
    assert targets[1] == [2.0, 300.0]
    normalized = target_tensor("regression", targets, space)
    assert normalized.mean(0).tolist() == pytest.approx([0, 0], abs=1e-6)
    assert normalized.std(0, unbiased=False).tolist() == pytest.approx([1, 1], abs=1e-5)
    outputs = outputs_from_logits(normalized, space)  # a perfect model's outputs, back in the data's units
    assert [o["targets"]["quality"] for o in outputs] == pytest.approx(quality, rel=1e-5)
    assert [o["targets"]["speed"] for o in outputs] == pytest.approx(speed, rel=1e-5)
    assert outputs[0]["value"] == pytest.approx([1.0, 100.0], rel=1e-5)  # the list, in the order of names
    constant = task_space("regression", [_ex("a", a=1.0, b=5.0), _ex("b", a=2.0, b=5.0)])
    assert constant["std"][1] == 1.0

    # eval/test rows must give the run's targets (the head has one output per target)
    check_known_labels([_ex("x", speed=1.0, quality=2.0)], space, "test")
    with pytest.raises(DataError, match="quality, speed") as info:
        check_known_labels([_ex("x", line=9, quality=2.0)], space, "test")
    assert "f.jsonl:9" in info.value.message


def test_metrics_per_target_and_their_mean_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 2)) * [1, 100] + [3, 300]
    pred = y + rng.normal(size=(50, 2)) * [0.5, 80]
    ours = regression_metrics(y.tolist(), pred.tolist(), ["quality", "speed"])
    for name, fn in (("mse", sk.mean_squared_error), ("mae", sk.mean_absolute_error), ("r2", sk.r2_score)):
        assert ours[name] == pytest.approx(fn(y, pred))  # uniform average over targets
        for j, target in enumerate(("quality", "speed")):
            assert ours[f"{name}/{target}"] == pytest.approx(fn(y[:, j], pred[:, j]))
    assert "mse/quality" not in regression_metrics(y[:, :1].tolist(), pred[:, :1].tolist(), ["quality"])

    # eval.metrics [mse, r2] brings each target's mse and r2, not its mae
    picked = select(["mse", "r2"], "regression", ours)
    assert set(picked) == {"mse", "r2", "mse/quality", "mse/speed", "r2/quality", "r2/speed"}

    # the prior baseline predicts each target's training mean
    space = {"task": "regression", "names": ["quality", "speed"], "mean": [0, 0], "std": [1, 1]}
    prior = _prior_outputs("regression", space, [[1.0, 10.0], [3.0, 30.0]], 2)
    assert prior[0] == {"value": [2.0, 20.0], "targets": {"quality": 2.0, "speed": 20.0}}
    scores = task_metrics("regression", space, [[2.0, 20.0], [2.0, 30.0]], prior)
    assert scores["mse/quality"] == 0 and scores["mse/speed"] == 50.0 and scores["mse"] == 25.0

    from tunesmith.report import metric_rows

    rows = metric_rows({"finetuned": {"mse/speed": 1.0, "r2/speed": 0.9}, "base": {"mse/speed": 2.0, "r2/speed": 0},
                        "delta": {"mse/speed": -1.0, "r2/speed": 0.9}})
    assert [(r["lower_is_better"], r["better"]) for r in rows] == [(True, True), (False, True)]


# ---- integration: minilm-l6, two targets read from the text ------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reviews_multitarget" / "project.yaml"


def test_minilm_learns_two_targets_and_predicts_serves_and_exports_them(tmp_path):
    from test_classification import _serve
    from tunesmith.config import load_config
    from tunesmith.models.classifier import load_classifier
    from tunesmith.pipeline import run_project

    # 60 reviews (59 after dedup) from two CSV columns, quality and delivery 1-5, each set by its own phrase
    config = load_config(EXAMPLE, [f"output={tmp_path / 'run'}"])
    metrics = run_project(config)
    run = Path(config.output)

    space = json.loads((run / "targets.json").read_text())
    assert space["names"] == ["quality", "delivery"] and space["normalize"] is True
    assert all(2 < mean < 4 for mean in space["mean"]) and all(1 < std < 2 for std in space["std"])
    tuned, base = metrics["finetuned"], metrics["base"]
    assert set(tuned) == {f"{m}{t}" for m in ("mse", "mae", "r2") for t in ("", "/quality", "/delivery")}
    for target in ("quality", "delivery"):  # each target beats its mean predictor, not only the average
        assert tuned[f"mse/{target}"] < 0.5 * base[f"mse/{target}"], metrics
        assert tuned[f"r2/{target}"] > 0.5, metrics
    assert tuned["mse"] == pytest.approx((tuned["mse/quality"] + tuned["mse/delivery"]) / 2, abs=1e-5)

    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 20 and set(predictions[0]["prediction"]) == {"quality", "delivery"}
    assert predictions[0]["reference"].startswith("quality=")
    classifier = load_classifier(run, "cpu")  # reloaded from adapter/ + targets.json
    again = classifier.predict([p["text"] for p in predictions[:5]])
    for a, p in zip(again, predictions):
        assert a["targets"] == pytest.approx(p["prediction"], abs=1e-4)
        assert a["value"] == pytest.approx([p["prediction"]["quality"], p["prediction"]["delivery"]], abs=1e-4)

    # `tunesmith predict`: one row per input, both targets by name
    texts = tmp_path / "texts.jsonl"
    write_jsonl(texts, [{"text": p["text"], "id": i} for i, p in enumerate(predictions[:5])])
    result = cli("predict", run, "--input", texts, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [w["id"] for w in written] == list(range(5))
    assert [w["targets"] for w in written] == [pytest.approx(a["targets"], abs=1e-4) for a in again]

    # `tunesmith export --format merged`: plain transformers gives both outputs, named in its config
    exported = tmp_path / "export"
    result = cli("export", run, "--format", "merged", "-o", exported)
    assert result.returncode == 0, result.stderr
    parity = json.loads((exported / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_logit_diff"] <= 1e-4
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(exported)
    assert plain.config.num_labels == 2 and plain.config.id2label == {0: "quality", 1: "delivery"}
    assert json.loads((exported / "targets.json").read_text())["names"] == ["quality", "delivery"]

    # `tunesmith serve`: POST /v1/classify answers both targets
    served = _serve(run, tmp_path)
    try:
        reply = httpx.post(f"{served['base']}/v1/classify",
                           json={"model": "tiny", "input": [p["text"] for p in predictions[:5]]}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["task"] == "regression"
        assert [d["targets"] for d in reply.json()["data"]] == [pytest.approx(a["targets"], abs=1e-4)
                                                                for a in again]
    finally:
        served["proc"].terminate()
        served["proc"].wait(timeout=15)
