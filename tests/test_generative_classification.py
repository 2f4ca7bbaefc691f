"""Generative classification (model.classifier: generative): config checks, the prompt, constrained scoring
against a brute-force computation, a run end to end on the tiny Llama (eval, report, predict, serve, export,
reload), and one integration run on the embedded SmolLM2 that must beat chance."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package brings
import pytest
import torch

from conftest import COLORS, NAMES, write_jsonl
from helpers import cli
from tunesmith.errors import ConfigError

# ---- config -------------------------------------------------------------------------------------------------


def _project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "p.yaml").write_text(body)
    return tmp_path / "p.yaml"


def test_generative_needs_task_classification_and_a_decoder(tmp_path):
    from tunesmith.config import load_config

    with pytest.raises(ConfigError) as error:
        load_config(_project(tmp_path, "task: regression\nmodel:\n  classifier: generative\n"))
    assert "model.classifier" in error.value.message and "p.yaml:3" in error.value.render()
    assert "model.classifier: head" in error.value.fix
    with pytest.raises(ConfigError, match="multilabel"):
        load_config(raw={"task": "multilabel"}, overrides=["model.classifier=generative"])
    with pytest.raises(ConfigError) as error:
        load_config(raw={"task": "classification", "model": {"base": "minilm-l6", "classifier": "generative"}})
    assert "encoder" in error.value.message
    assert "model.classifier: head" in error.value.fix and "smollm2-135m-instruct" in error.value.fix
    with pytest.raises(ConfigError, match="'model.classifier' has an invalid value"):
        load_config(raw={"task": "classification", "model": {"classifier": "llm"}})


def test_a_local_encoder_folder_is_refused_before_training(tmp_path):
    from transformers import BertConfig

    from tunesmith.models.genclass import require_decoder

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ConfigError, match="is an encoder"):
        require_decoder(str(tmp_path / "bert"), "my-bert")


def test_generative_defaults_are_the_decoders(tmp_path):
    from tunesmith.config import TASK_DEFAULTS, load_config

    config = load_config(raw={"task": "classification"}, overrides=["model.classifier=generative"])
    assert config.model.base == "smollm2-135m-instruct" and config.train.lr == 2.0e-4
    assert config.train.epochs == TASK_DEFAULTS["generation"]["train.epochs"]
    assert config.eval.metrics == TASK_DEFAULTS["classification"]["eval.metrics"]
    head = load_config(raw={"task": "classification"})
    assert head.model.base == "minilm-l6" and head.model.classifier == "head" and head.train.lr == 5.0e-4
    assert load_config(raw={"task": "classification", "model": {"classifier": "generative"},
                            "train": {"lr": 1e-3}}).train.lr == 1e-3


# ---- prompt and data ----------------------------------------------------------------------------------------


def color_rows(n: int, seed: int) -> list[dict]:
    """Text + label rows whose label (a colour) is written in the text: learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        color = rng.choice(COLORS[:3])
        rows.append({"text": f"{rng.choice(NAMES)} has {rng.randint(1, 9)} {color} cups.", "label": color})
    return rows


def test_prompt_lists_the_sorted_labels_and_training_learns_only_the_answer(tmp_path, tiny_llama):
    from tunesmith.data import genclass
    from tunesmith.data.formats import Example
    from tunesmith.models.load import load_tokenizer

    prompt = genclass.system_prompt(["red", "blue"], "You sort support tickets.")
    assert prompt.startswith("You sort support tickets.\n\n") and prompt.endswith("\n- red\n- blue")
    tokenizer = load_tokenizer(str(tiny_llama))
    rows = [Example(None, "t.jsonl", i + 1, text=r["text"], label=r["label"]) for i, r in enumerate(color_rows(8, 0))]
    rows.append(Example(None, "t.jsonl", 9, text="Ana has " + "many " * 300 + "cups.", label="red"))
    with pytest.raises(ConfigError, match="data.max_seq_len=64 leaves"):  # the label list alone takes ~95
        genclass.prepare(tokenizer, rows, rows[:2], rows[:2], 64, tmp_path)
    stats = genclass.prepare(tokenizer, rows, rows[:2], rows[:2], 140, tmp_path)
    space = json.loads((tmp_path / "labels.json").read_text())
    assert space["labels"] == sorted({r.label for r in rows}) and space["classifier"] == "generative"
    assert all(f"- {label}\n" in space["system_prompt"] + "\n" for label in space["labels"])
    assert stats["train"]["truncated"] == 1 and stats["train"]["kept"] == 9  # the long text cut, its label kept
    for row, example in zip((json.loads(x) for x in (tmp_path / "data" / "train.tokens.jsonl").open()), rows):
        answer = [t for t in row["labels"] if t != -100]
        assert tokenizer.decode(answer) == example.label + tokenizer.eos_token and len(row["input_ids"]) <= 140


# ---- constrained scoring ------------------------------------------------------------------------------------


def test_scoring_matches_a_full_forward_per_label(tiny_llama, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tunesmith.data.genclass import chat, system_prompt
    from tunesmith.data.tokenize import prompt_text
    from tunesmith.models import genclass
    from tunesmith.models.load import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    # "red" is a prefix of "red cups": only the end-of-turn token tells them apart
    labels = ["blue", "green", "red", "red cups"]
    space = {"task": "classification", "labels": labels, "classifier": "generative",
             "system_prompt": system_prompt(labels)}
    clf = genclass.GenerativeClassifier(model, tokenizer, space, 256, "cpu")
    texts = ["Ana has 3 red cups", "hi", "Ben buys 4 more blue cups now? How many blue cups now?"]
    brute = torch.zeros((len(texts), len(labels)))
    with torch.no_grad():
        for i, text in enumerate(texts):
            prompt = tokenizer(prompt_text(tokenizer, chat(clf.system, text)), add_special_tokens=False)["input_ids"]
            for j in range(len(labels)):
                answer = clf.answers[j]
                assert answer[-1] == tokenizer.eos_token_id
                logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0].float(), -1)
                brute[i, j] = sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(answer))
    assert clf.answers[3][:len(clf.answers[2]) - 1] == clf.answers[2][:-1]
    for batch_size, rows in ((1, 64), (2, 3), (3, 1)):  # one prompt at a time, padded batches, one label a pass
        monkeypatch.setattr(genclass, "LABEL_ROWS", rows)
        assert torch.allclose(clf.logits(texts, batch_size), brute, atol=1e-4)
    # bounded logits: the prompt pass keeps its last position only, a label pass LABEL_ROWS rows of answer steps
    shapes = []
    hook = model.register_forward_hook(lambda _m, _args, out: shapes.append(tuple(out.logits.shape)))
    monkeypatch.setattr(genclass, "LABEL_ROWS", 4)
    clf.logits(texts, 2)
    hook.remove()
    longest = max(len(a) for a in clf.answers)
    assert shapes[0] == (2, 1, len(tokenizer)) and all(r * w <= 4 * (longest - 1) for r, w, _ in shapes[1:])
    outputs = clf.predict(texts)
    for row, output in zip(brute, outputs):
        assert output["label"] == labels[int(row.argmax())]
        assert sum(output["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        expected = torch.softmax(row, -1)
        assert [output["probabilities"][label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-5)


# ---- end to end on the tiny Llama ---------------------------------------------------------------------------


def write_project(tmp_path: Path, model, train: list[dict], test: list[dict], *extra: str) -> Path:
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    project = tmp_path / "project.yaml"
    project.write_text("\n".join(["name: gen", "task: classification", "data:", "  train: train.jsonl",
                                  "  test: test.jsonl", "  clean: {dedup: none}", "model:", f"  base: {model}",
                                  "  classifier: generative", "train:", "  micro_batch_size: 8",
                                  "  global_batch_size: 8", *extra, f"output: {tmp_path / 'run'}", ""]))
    return project


def _serve(source: Path, tmp_path: Path) -> tuple[str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", str(source), "--port", str(port),
                             "--model-id", "gen"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return base, proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError((tmp_path / "serve.log").read_text())


def test_generative_run_end_to_end_and_reload(tmp_path, tiny_llama):
    from tunesmith.config import load_config
    from tunesmith.models.classifier import load_classifier
    from tunesmith.models.genclass import GenerativeClassifier, load_generative_classifier
    from tunesmith.pipeline import run_project

    # fp32: the run then scores in fp32 like its fp32 export on CPU, so the two can be compared to 1e-3
    project = write_project(tmp_path, tiny_llama, color_rows(48, 0), color_rows(12, 1), "  max_steps: 4",
                            "  lr: 3.0e-3", "  precision: fp32")
    config = load_config(project)
    metrics = run_project(config)
    run = Path(config.output)
    assert set(metrics) == {"task", "n", "base", "finetuned", "delta"} and metrics["n"] == 12
    assert metrics["task"] == "classification"
    for side in ("base", "finetuned"):
        assert {"accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_micro"} <= set(metrics[side])
    assert metrics["delta"]["accuracy"] == pytest.approx(metrics["finetuned"]["accuracy"] - metrics["base"]["accuracy"])
    space = json.loads((run / "labels.json").read_text())
    assert space["labels"] == ["blue", "green", "red"] and "- green" in space["system_prompt"]
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "data" / "train.tokens.jsonl").is_file()
    assert "zero-shot" in json.loads((run / "eval" / "source.json").read_text())["baseline"]
    confusion = json.loads((run / "eval" / "confusion.json").read_text())
    assert confusion["labels"] == space["labels"] and sum(map(sum, confusion["matrix"])) == 12
    assert set(json.loads((run / "eval" / "per_class.json").read_text())) == set(space["labels"])
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert {"text", "reference", "prediction", "probabilities", "base_output"} <= set(predictions[0])
    assert all(p["prediction"] in space["labels"] and p["base_output"] in space["labels"] for p in predictions)
    # the baseline is the base decoder itself, not the prior: its probabilities differ from the fine-tuned ones
    assert predictions[0]["base_probabilities"] != predictions[0]["probabilities"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]

    report = cli("report", run)
    assert report.returncode == 0, report.stderr
    markdown = (run / "report.md").read_text()
    assert (run / "report.html").is_file() and "accuracy" in markdown
    assert f"  - base: {predictions[0]['base_output']}" in markdown  # labels, without a rougeL that is not there

    classifier = load_classifier(run, "cpu")
    assert isinstance(classifier, GenerativeClassifier)
    again = classifier.predict([p["text"] for p in predictions])
    assert [a["label"] for a in again] == [p["prediction"] for p in predictions]

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": p["text"], "id": i}) + "\n" for i, p in enumerate(predictions)))
    result = cli("predict", run, "--input", texts, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [w["label"] for w in written] == [p["prediction"] for p in predictions]
    assert [w["id"] for w in written] == list(range(12))
    assert sum(written[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)

    # export: the merged decoder plus labels.json, reloaded as the same classifier
    exported = tmp_path / "export"
    result = cli("export", run, "--format", "merged", "-o", exported)
    assert result.returncode == 0, result.stderr
    assert json.loads((exported / "parity.json").read_text())["passed"]
    assert json.loads((exported / "labels.json").read_text())["labels"] == space["labels"]
    reloaded = load_generative_classifier(exported, "cpu").predict([p["text"] for p in predictions])
    assert [r["label"] for r in reloaded] == [p["prediction"] for p in predictions]
    for a, b in zip(reloaded, again):
        assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=1e-3)

    result = cli("predict", exported, "--input", texts, "-o", tmp_path / "out2.jsonl")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["label"] for line in (tmp_path / "out2.jsonl").read_text().splitlines()] == \
        [p["prediction"] for p in predictions]

    # /v1/classify on the export folder (the run directory takes the same loader as head classifiers)
    base, proc = _serve(exported, tmp_path)
    try:
        reply = httpx.post(f"{base}/v1/classify", json={"model": "gen", "input": [p["text"] for p in predictions[:4]]},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        assert [d["label"] for d in reply.json()["data"]] == [p["prediction"] for p in predictions[:4]]
        assert set(reply.json()["data"][0]["probabilities"]) == set(space["labels"])
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# ---- integration: SmolLM2 -----------------------------------------------------------------------------------

TICKETS = {
    "refund": ["I want my money back for order {n}", "Please refund the {item} I returned",
               "How long until my refund for the {item} arrives?", "I was charged twice, give me a refund"],
    "delivery": ["Where is my {item}? It has not arrived", "Track my parcel with order {n}",
                 "The courier never delivered my {item}", "When will order {n} be shipped?"],
    "password": ["I forgot my password and cannot log in", "Reset the password of my account please",
                 "My login fails after I changed the password", "How do I change my account password?"],
}
ITEMS = ["shoes", "lamp", "jacket", "phone case", "kettle", "backpack"]


def ticket_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    labels = sorted(TICKETS)
    return [{"text": rng.choice(TICKETS[label]).format(n=rng.randint(1000, 9999), item=rng.choice(ITEMS)),
             "label": label} for label in (labels[i % 3] for i in range(n))]


@pytest.mark.integration
def test_smollm2_generative_tickets_beat_chance(tmp_path):
    from tunesmith.config import load_config
    from tunesmith.pipeline import run_project

    # 14 steps: at the default lr 2e-4 they reached 0.75 accuracy (base 0.54); 1e-3 learns the three labels
    # in that budget (a 135M decoder with LoRA takes it on answers this short)
    project = write_project(tmp_path, "smollm2-135m-instruct", ticket_rows(60, 0), ticket_rows(24, 1),
                            "  epochs: 2", "  lr: 1.0e-3")
    metrics = run_project(load_config(project))
    # chance is 1/3 (balanced classes); the zero-shot base reads the same prompt with the label list
    assert metrics["finetuned"]["accuracy"] >= 0.6, metrics
    assert metrics["finetuned"]["accuracy"] > metrics["base"]["accuracy"], metrics


def test_plan_counts_the_chat_rows_not_a_head(tmp_path, tiny_llama):
    project = write_project(tmp_path, tiny_llama, color_rows(40, 0), color_rows(8, 1))
    result = cli("plan", project, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    # an LM head, not a classifier: each row is the prompt with the label list (~95 tokens); only the answer
    # (the label and the end-of-turn token, a few tokens) is labelled
    assert data["num_labels"] == 0 and data["longest_row"] > 95
    assert data["worst_micro_batch"]["labelled_tokens"] < 8 * 6
