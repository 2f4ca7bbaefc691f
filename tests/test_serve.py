"""`tunesmith serve | predict | chat` on a tiny fine-tuned run: a real server process on loopback, spoken to with
the official `openai` client and raw HTTP; the engine's batched output checked against transformers' own."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch

from conftest import make_pairs, write_jsonl
from helpers import cli

API_KEY = "test-key-123"
SYSTEM_PROMPT = "You count cups."
MAX_TOKENS_LIMIT = 64
MAX_PROMPT_TOKENS = 200
MAX_BODY_BYTES = 20_000
QUESTION = "Ana has 3 red cups and buys 4 more. How many red cups now?"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama) -> Path:
    """A tiny generation run (2 LoRA steps, seconds) with a system prompt, trained in-process. The tiny model
    learns nothing in 2 steps, so answers run to max_tokens; stopping is tested with stop strings and an
    end-of-turn id set on the engine."""
    from tunesmith.config import load_config
    from tunesmith.pipeline import train_project

    root = tmp_path_factory.mktemp("serve-run")
    write_jsonl(root / "train.jsonl", make_pairs(64, seed=2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TUNESMITH_CACHE", str(root / "cache"))
        config = load_config(raw={"name": "tiny", "task": "generation",
                                  "data": {"train": str(root / "train.jsonl"), "system_prompt": SYSTEM_PROMPT},
                                  "model": {"base": str(tiny_llama)},
                                  "train": {"max_steps": 2, "lr": 3.0e-3, "micro_batch_size": 8,
                                            "global_batch_size": 8},
                                  "output": str(root / "runs" / "tiny")})
        train_project(config)
    return Path(config.output)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir):
    """`tunesmith serve` in a subprocess; yields its base URL once /health answers."""
    port = _free_port()
    log = run_dir.parent / "server.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", str(run_dir), "--port", str(port),
                                 "--api-key", API_KEY, "--max-batch-size", "8", "--batch-wait-ms", "300",
                                 "--max-tokens-limit", str(MAX_TOKENS_LIMIT), "--max-prompt-tokens",
                                 str(MAX_PROMPT_TOKENS), "--max-body-bytes", str(MAX_BODY_BYTES), "--threads", "1"],
                                stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to a minute on a busy machine, then give up
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"the server did not answer /health:\n{log.read_text()}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(run_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run_dir / "adapter")


def _prompt_ids(tokenizer, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- pieces without a server ----

def test_text_stream_holds_back_stop_prefixes_and_broken_characters():
    from tunesmith.serve.textstream import TextStream

    class ByteTokenizer:  # each id is one UTF-8 byte, so a character can span tokens
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    stream = TextStream(ByteTokenizer(), stop=["\nUser:"])
    sent = "".join(stream.push(b) for b in "héllo\nUs".encode())
    assert sent == "héllo"  # "\nUs" might become the stop string
    sent += "".join(stream.push(b) for b in "er: more".encode())
    assert sent == "héllo" and stream.stopped and stream.text == "héllo"
    stream = TextStream(ByteTokenizer(), stop=["\nUser:"])
    parts = [stream.push(b) for b in "é\nUx".encode()]
    assert parts[0] == "" and parts[1] == "é"  # half a character is never sent
    assert "".join(parts) + stream.finish() == "é\nUx" and not stream.stopped


def test_non_generation_runs_and_bad_folders_are_clear_errors(tmp_path):
    from tunesmith.errors import RunDirError
    from tunesmith.serve.loading import load_served

    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.yaml").write_text("name: c\ntask: classification\n")
    with pytest.raises(RunDirError, match="neither adapter/ nor model/"):  # a classifier run, not trained yet
        load_served(tmp_path / "cls")
    with pytest.raises(RunDirError, match="neither a run directory"):
        load_served(tmp_path)
    # Through the CLI: exit 1 and the message, no traceback.
    write_jsonl(tmp_path / "x.jsonl", [{"prompt": "hi"}])
    result = cli("predict", tmp_path / "cls", "--input", tmp_path / "x.jsonl", "-o", tmp_path / "o.jsonl")
    assert result.returncode == 1 and "has not finished training" in result.stderr
    assert "Traceback" not in result.stderr


def test_refuses_to_bind_a_public_address_without_a_key(tmp_path):
    result = cli("serve", tmp_path, "--host", "0.0.0.0", "--port", "1", timeout=60)
    assert result.returncode == 1
    assert "without an API key" in result.stderr and "--api-key" in result.stderr
    assert "Traceback" not in result.stderr


def test_continuous_batching_matches_transformers_greedy(run_dir):
    """Rows joining a running batch (different lengths, left-padded, cache merged) and leaving it early
    must generate exactly what model.generate does for each prompt alone."""
    from tunesmith.eval.generate import generate
    from tunesmith.serve.engine import Engine, GenerationRequest
    from tunesmith.serve.loading import load_served, render_chat

    served = load_served(run_dir)
    questions = [QUESTION, "Ben has 9 blue cups and buys 1 more. How many blue cups now?", "Hi",
                 "Chen has 2 green cups and buys 7 more. How many green cups now? Answer with care, please."]
    ids = [render_chat(served, [{"role": "user", "content": q}]) for q in questions]
    texts = [served.tokenizer.decode(i) for i in ids]
    max_new = [12, 5, 12, 9]
    expected = [generate(served.model, served.tokenizer, [t], n, 1, "reference")[0] for t, n in zip(texts, max_new)]
    # All four wait before the worker starts, so the run is the same every time: three start together,
    # and the fourth joins the running batch (longer cache, merged by left padding) when the 5-token row leaves.
    engine = Engine(served.model, served.tokenizer, max_batch_size=3, batch_wait_s=0.0)
    events: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(4):
        engine.submit(GenerationRequest(ids[i], max_new[i], lambda e, i=i: events.put((i, e))))
    results: list = [None] * 4
    engine.start()
    try:
        while any(r is None for r in results):
            i, event = events.get(timeout=120)
            if event["type"] != "delta":
                results[i] = event
    finally:
        engine.stop()
    assert [r["text"].strip() for r in results] == expected
    assert all(r["prompt_tokens"] == len(i) for r, i in zip(results, ids))
    assert max(engine.stats.decode_batch_sizes) == 3 and engine.stats.prefills == 2

    # An end-of-turn token ends a row with finish_reason "stop"; it counts as generated, it is not text.
    greedy = served.model.generate(torch.tensor([ids[0]]), max_new_tokens=12, do_sample=False)[0, len(ids[0]):]
    greedy = greedy.tolist()
    k = max(i for i in range(len(greedy)) if greedy[i] not in greedy[:i])  # its first appearance
    engine = Engine(served.model, served.tokenizer).start()
    engine.eos_ids = {greedy[k]}
    try:
        done = list(engine.stream(ids[0], 12))[-1]
    finally:
        engine.stop()
    assert done["finish_reason"] == "stop" and done["completion_tokens"] == k + 1
    assert done["text"] == served.tokenizer.decode(greedy[:k], skip_special_tokens=True)

    # A consumer that stops listening frees its row at the next step (the client hung up).
    engine = Engine(served.model, served.tokenizer).start()
    try:
        events = engine.stream(ids[0], served.max_context - len(ids[0]))
        assert next(events)["type"] == "delta"
        events.close()  # as the server does when a streaming client disconnects
        for _ in range(600):  # bounded: the row leaves within a step or two
            if engine.stats_json()["active"] == 0:
                break
            time.sleep(0.05)
        assert engine.stats_json()["active"] == 0 and engine.stats.cancelled == 1 and engine.stats.finished == 0
    finally:
        engine.stop()

    # The adapter was merged: the served weights are not the base's.
    from tunesmith.models.load import load_causal_lm

    base_model = load_causal_lm(str(served_base(run_dir)), torch.float32)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(served.model.state_dict()[name], base_model.state_dict()[name])


def _engine_answers(served, prompts: list[list[int]], max_new_tokens: int | list[int],
                    max_batch_size: int = 16) -> list[str]:
    from tunesmith.serve.engine import Engine, GenerationRequest

    engine = Engine(served.model, served.tokenizer, batch_wait_s=0.0, max_batch_size=max_batch_size)
    events: queue.SimpleQueue = queue.SimpleQueue()
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    for i, ids in enumerate(prompts):  # queued before the start, so the batching is the same every run
        engine.submit(GenerationRequest(ids, budgets[i], lambda e, i=i: events.put((i, e))))
    answers: list = [None] * len(prompts)
    engine.start()
    try:
        while any(a is None for a in answers):
            i, event = events.get(timeout=120)
            if event["type"] != "delta":
                answers[i] = event["text"]
    finally:
        engine.stop()
    return answers


def test_export_folders_serve_like_the_run_and_batching_matches_transformers(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from tunesmith.eval.generate import generate
    from tunesmith.serve.loading import load_served, render_chat

    run = load_served(run_dir)
    export = tmp_path / "support-export"
    run.model.save_pretrained(export)
    run.tokenizer.save_pretrained(export)
    served = load_served(export, system_prompt=SYSTEM_PROMPT)  # an export has no project file
    assert served.model_id == "support-export" and served.kind == "generate"
    messages = [{"role": "user", "content": QUESTION}]
    assert render_chat(served, messages) == render_chat(run, messages)
    assert _engine_answers(served, [render_chat(served, messages)], 10) == \
        _engine_answers(run, [render_chat(run, messages)], 10)

    # Random models with lively outputs (the tiny run's greedy answer is one repeated token, which would hide
    # a wrong position or a misaligned cache): a Llama (RoPE) and a GPT-2 (learned positions, its own cache code).
    tokenizer = run.tokenizer
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    configs = {"llama": LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3,
                                    pad_token_id=tokenizer.pad_token_id, **ids),
               "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, initializer_range=0.3, **ids)}
    questions = [QUESTION, "Ben has 9 blue cups and buys 1 more.", "Chen has 2 green cups. Count them, please.", "Hi"]
    for name, config in configs.items():
        folder = tmp_path / name
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        served = load_served(folder)
        prompts = [render_chat(served, [{"role": "user", "content": q}]) for q in questions]
        # The 4-token row leaves early and the short fourth prompt joins the running batch, left-padded to it.
        max_new = [12, 4, 12, 8]
        expected = [generate(served.model, served.tokenizer, [served.tokenizer.decode(p)], n, 1, "reference")[0]
                    for p, n in zip(prompts, max_new)]
        assert len(set(expected)) == 4 and all(len(e) > 3 for e in expected)  # the check can see mistakes
        assert [a.strip() for a in _engine_answers(served, prompts, max_new, max_batch_size=3)] == expected, name


def served_base(run_dir: Path) -> Path:
    from tunesmith.models.load import resolve
    from tunesmith.runs import load_run_config

    return Path(resolve(load_run_config(run_dir).model.base).path)


# ---- the server ----

def test_models_health_and_auth(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{server}/health")  # no key needed
    assert health.status_code == 200 and health.json()["model"] == "tiny"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(f"{server}/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert caught.value.status_code == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_chat_completion_usage_streaming_and_stop_strings(client, tokenizer):
    ask = {"model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "temperature": 0}
    answer = client.chat.completions.create(**ask)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content  # (the untrained model: "\n\n...")
    assert choice.finish_reason == "length" and answer.usage.completion_tokens == 12
    prompt_ids = _prompt_ids(tokenizer, QUESTION)  # the run's system prompt is applied, as in training
    assert answer.usage.prompt_tokens == len(prompt_ids)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    # Streaming gives the same greedy text, chunk by chunk, then the usage.
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == choice.message.content and len([d for d in deltas if d]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
        answer.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})

    # Sampling with a seed is reproducible; a stop string ends the answer just before its first occurrence,
    # streamed or not (the seeded samples are the same tokens up to there).
    sampled = {**ask, "temperature": 1.5, "top_p": 0.95, "seed": 7, "max_tokens": 16}
    content = client.chat.completions.create(**sampled).choices[0].message.content
    assert client.chat.completions.create(**sampled).choices[0].message.content == content
    assert len(content) >= 6
    stop_at = content[-3:]
    stopped = client.chat.completions.create(**sampled, stop=[stop_at, "never-generated"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == content[:content.find(stop_at)]
    streamed = list(client.chat.completions.create(**sampled, stop=stop_at, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        stopped.choices[0].message.content


def test_server_greedy_equals_tunesmith_generation(client, run_dir):
    from tunesmith.eval.generate import generate
    from tunesmith.serve.loading import load_served, render_chat

    served = load_served(run_dir)
    question = "Dara has 5 black cups and buys 2 more. How many black cups now?"
    text = served.tokenizer.decode(render_chat(served, [{"role": "user", "content": question}]))
    expected = generate(served.model, served.tokenizer, [text], 24, 1, "reference")[0]
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                            max_tokens=24, temperature=0)
    assert answer.choices[0].message.content.strip() == expected


def test_completions_endpoint(client, tokenizer):
    done = client.completions.create(model="tiny", prompt="Ana has 3 red cups", max_tokens=5, temperature=0)
    assert done.choices[0].finish_reason in ("length", "stop") and done.usage.completion_tokens <= 5
    assert done.usage.prompt_tokens == len(tokenizer("Ana has 3 red cups")["input_ids"])
    streamed = list(client.completions.create(model="tiny", prompt="Ana has 3 red cups", max_tokens=5,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text


def test_client_mistakes_are_openai_shaped_4xx_and_the_server_stays_up(server, client):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    url = f"{server}/v1/chat/completions"
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (b'{"model": "tiny", "messages": [', 400, None),  # bad JSON
        (json.dumps({**good, "max_tokens": "ten"}).encode(), 400, "max_tokens"),  # wrong type, no coercion
        (json.dumps({**good, "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({**good, "messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, None),
        (json.dumps({**good, "temperature": 5}).encode(), 400, "temperature"),
        (json.dumps({**good, "max_tokens": MAX_TOKENS_LIMIT + 1}).encode(), 400, "max_tokens"),
        (json.dumps({**good, "n": 2}).encode(), 400, "n"),
        (json.dumps({k: v for k, v in good.items() if k != "model"}).encode(), 400, "model"),
        (json.dumps({**good, "messages": [{"role": "user", "content": "cups " * 300}]}).encode(), 400, "messages"),
        (json.dumps({**good, "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]}).encode(),
         413, None),
        (b"[1, 2, 3]", 400, None),
    ]
    for body, status, param in cases:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        assert response.status_code == status, (body[:80], response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        if param is not None:
            assert error["param"] == param, (body[:80], error)
    too_long = httpx.post(url, headers=headers, json={**good, "messages": [{"role": "user", "content": "cups " * 300}]})
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(f"{server}/v1/nowhere", headers=headers).status_code == 404
    empty = httpx.post(f"{server}/v1/completions", headers=headers, json={"model": "tiny", "prompt": ""})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"
    # Chunked upload without Content-Length is capped too.
    chunked = httpx.post(url, headers=headers, content=iter([b"{" + b" " * 15_000, b" " * 15_000 + b"}"]))
    assert chunked.status_code == 413
    assert client.chat.completions.create(**good).choices[0].message.content is not None


def test_concurrent_requests_share_batches(server, client):
    before = httpx.get(f"{server}/health").json()["batching"]
    barrier = threading.Barrier(8)
    answers: list = [None] * 8

    def ask(i: int) -> None:
        barrier.wait(timeout=30)
        answers[i] = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"{['Ana', 'Ben'][i % 2]} has {i + 1} red cups "
                                                                   "and buys 2 more. How many red cups now?"}],
            max_tokens=24, temperature=0, stream=i % 2 == 1)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(a is not None for a in answers)
    after = httpx.get(f"{server}/health").json()["batching"]
    assert after["finished"] - before["finished"] == 8
    new_steps = {int(k): v - before["batch_size_histogram"].get(k, 0)
                 for k, v in after["batch_size_histogram"].items()}
    assert max(size for size, steps in new_steps.items() if steps > 0) > 1, after


# ---- predict and chat ----

def test_predict_end_to_end(run_dir, tmp_path, client):
    rows = [{"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Ana now has "
                                                                                                   "7 red cups."}],
             "id": "a"},
            {"prompt": "Ben has 2 blue cups and buys 5 more. How many blue cups now?", "id": "b"},
            {"instruction": "Count the cups.", "input": "Gus has 1 white cup and buys 1 more.", "id": "c"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = cli("predict", run_dir, "--input", source, "-o", out, "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in written] == ["a", "b", "c"] and all(r["prediction"] for r in written)
    assert written[0]["messages"] == rows[0]["messages"]  # input fields kept as they were
    served_answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                                   max_tokens=24, temperature=0).choices[0].message.content
    assert written[0]["prediction"] == served_answer  # the reference turn was not shown to the model
    assert all(r["finish_reason"] == "length" and r["completion_tokens"] == 24 for r in written)

    from tunesmith.errors import DataError
    from tunesmith.serve.predict import read_prompts

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"answer": "no prompt"}, {"messages": "x"}])
    with pytest.raises(DataError) as caught:
        read_prompts(bad)  # every bad row is listed, before any model is loaded
    assert f"{bad}:2" in caught.value.message and f"{bad}:3" in caught.value.message


def test_chat_repl_streams_answers(run_dir):
    proc = subprocess.run([sys.executable, "-m", "tunesmith.cli", "chat", str(run_dir), "--temperature", "0",
                           "--max-tokens", "24"], input=f"{QUESTION}\n/reset\n/exit\n", capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "model> " in proc.stdout and proc.stdout.count("you> ") == 3
