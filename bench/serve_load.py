"""Load test for `tunesmith serve` on loopback: many concurrent clients, a mix of valid and malformed requests.

    python bench/serve_load.py [RUN_DIR] [--clients 32] [--requests-per-client 3] [--max-tokens 32]

Without RUN_DIR a small LoRA run on the embedded SmolLM2-135M-Instruct is trained first (a few steps, in a temp
dir). Two parts, each against a fresh `tunesmith serve` subprocess:

1. Mixed load: `--clients` threads each send `--requests-per-client` requests, cycling through chat (plain and
   streaming) and malformed ones (bad JSON, a string for max_tokens, an unknown model, max_tokens over the limit).
   Checks: zero 5xx, zero dropped connections, every valid request answered, every malformed one a 4xx.
2. Batching speed-up: `--speedup-clients` clients send the same greedy chat requests to a server with
   `--max-batch-size 16` and to one with `--max-batch-size 1` (one request at a time); the ratio of requests/s
   is the speed-up (goal: >= 2x at 16 clients).

Bounded: a fixed number of requests, a per-request timeout and an overall deadline; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx

QUESTIONS = ["How do I reset my password?", "My order arrived damaged, what can I do?",
             "Can I change the delivery address after ordering?", "How long does a refund take?",
             "Do you ship to Canada?", "How do I cancel my subscription?", "Where is my invoice?",
             "Can I pay with PayPal?"]
ANSWERS = ["Open Settings, choose Security and press 'Reset password'; a link arrives by email within minutes.",
           "Sorry about that! Send us a photo of the damage from your orders page and we ship a replacement.",
           "Yes, until the parcel leaves the warehouse: open the order and edit the address.",
           "Refunds reach your account 3 to 5 business days after we receive the item.",
           "Yes, we ship to Canada; delivery takes 5 to 8 business days.",
           "Go to Account, then Subscription, and press 'Cancel'; you keep access until the period ends.",
           "Invoices are under Account, Orders; each order has a 'Download invoice' button.",
           "Yes, PayPal is available at checkout next to cards."]


def train_tiny_run(folder: Path) -> Path:
    """A few LoRA steps on SmolLM2 so the served model is a real fine-tuned run (not a quality benchmark)."""
    from tunesmith.config import load_config
    from tunesmith.pipeline import train_project

    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n"
                            for _ in range(4) for q, a in zip(QUESTIONS, ANSWERS)))
    config = load_config(raw={"name": "support-bench", "task": "generation", "data": {"train": str(data)},
                              "model": {"base": "smollm2-135m-instruct"},
                              "train": {"max_steps": 3, "micro_batch_size": 4, "global_batch_size": 4},
                              "output": str(folder / "run")})
    train_project(config)
    return Path(config.output)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, max_batch_size: int, max_tokens_limit: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", str(run_dir), "--port", str(port),
                             "--model-id", "bench", "--max-batch-size", str(max_batch_size),
                             "--max-tokens-limit", str(max_tokens_limit)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start within 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def chat_body(i: int, max_tokens: int, stream: bool, temperature: float) -> dict:
    body = {"model": "bench", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": max_tokens, "temperature": temperature, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def send(client: httpx.Client, base: str, kind: str, i: int, max_tokens: int, limit: int) -> dict:
    """One request; returns what happened: status, latency, tokens, whether it was valid, errors."""
    url = f"{base}/v1/chat/completions"
    start = time.perf_counter()
    record = {"kind": kind, "valid": kind in ("chat", "greedy", "stream"), "status": None, "tokens": 0,
              "ttft": None}
    try:
        if kind in ("chat", "greedy"):
            response = client.post(url, json=chat_body(i, max_tokens, False, 0.0 if kind == "greedy" else 0.7))
            record["status"] = response.status_code
            if response.status_code == 200:
                record["tokens"] = response.json()["usage"]["completion_tokens"]
        elif kind == "stream":
            with client.stream("POST", url, json=chat_body(i, max_tokens, True, 0.7)) as response:
                record["status"] = response.status_code
                done = False
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if record["ttft"] is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        record["ttft"] = time.perf_counter() - start
                    if chunk.get("usage"):
                        record["tokens"] = chunk["usage"]["completion_tokens"]
                if not done:
                    record["status"] = "incomplete stream"
        else:
            body = {"bad_json": b'{"model": "bench", "messages": [',
                    "wrong_type": json.dumps({**chat_body(i, max_tokens, False, 0.7), "max_tokens": "ten"}).encode(),
                    "unknown_model": json.dumps({**chat_body(i, max_tokens, False, 0.7), "model": "gpt-9"}).encode(),
                    "over_limit": json.dumps({**chat_body(i, limit + 1, False, 0.7)}).encode()}[kind]
            response = client.post(url, content=body, headers={"Content-Type": "application/json"})
            record["status"] = response.status_code
            record["error_shape"] = set(response.json().get("error", {})) == {"message", "type", "param", "code"}
    except httpx.TransportError as exc:
        record["status"] = f"dropped: {type(exc).__name__}"
    record["latency"] = time.perf_counter() - start
    return record


def run_clients(base: str, clients: int, per_client: int, kinds: list[str], max_tokens: int, limit: int,
                deadline_s: float) -> tuple[list[dict], float]:
    records: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    stop_at = time.monotonic() + deadline_s

    def client_loop(c: int) -> None:
        with httpx.Client(timeout=300) as client:
            barrier.wait()
            for r in range(per_client):
                if time.monotonic() > stop_at:
                    return
                n = c * per_client + r
                record = send(client, base, kinds[n % len(kinds)], n, max_tokens, limit)
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(records: list[dict], wall: float) -> dict:
    valid = [r for r in records if r["valid"]]
    ok = [r for r in valid if r["status"] == 200]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {"sent": len(records), "valid": len(valid), "answered": len(ok),
            "malformed_4xx": sum(1 for r in records if not r["valid"] and isinstance(r["status"], int)
                                 and 400 <= r["status"] < 500 and r.get("error_shape")),
            "malformed": sum(1 for r in records if not r["valid"]),
            "5xx": sum(1 for r in records if isinstance(r["status"], int) and r["status"] >= 500),
            "dropped": sum(1 for r in records if not isinstance(r["status"], int)),
            "req_s": len(ok) / wall, "tok_s": sum(r["tokens"] for r in ok) / wall,
            "p50": pct(latencies, 50), "p95": pct(latencies, 95), "ttft_p50": pct(ttfts, 50), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--speedup-clients", type=int, default=16)
    parser.add_argument("--speedup-requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--deadline-s", type=float, default=900)
    args = parser.parse_args()
    limit = 256

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or train_tiny_run(Path(tmp))
        print(f"run: {run_dir}; CPU threads {os.cpu_count()}", flush=True)

        proc, base = start_server(run_dir, 16, limit)
        try:
            kinds = ["chat", "stream", "chat", "bad_json", "stream", "wrong_type", "chat", "unknown_model",
                     "stream", "over_limit"]
            mixed, wall = run_clients(base, args.clients, args.requests_per_client, kinds, args.max_tokens, limit,
                                      args.deadline_s)
            batching = httpx.get(f"{base}/health").json()["batching"]
        finally:
            stop_server(proc)
        mixed_summary = summarize(mixed, wall)

        speed = {}
        for batch in (16, 1):
            proc, base = start_server(run_dir, batch, limit)
            try:
                # Greedy and identical prompts for both servers: the same tokens are generated, only the
                # scheduling differs.
                records, wall = run_clients(base, args.speedup_clients, args.speedup_requests_per_client,
                                            ["greedy"], args.max_tokens, limit, args.deadline_s)
            finally:
                stop_server(proc)
            speed[batch] = summarize(records, wall)

    m = mixed_summary
    print(f"\n## Mixed load: {args.clients} clients x {args.requests_per_client} requests, max_tokens "
          f"{args.max_tokens}, server --max-batch-size 16\n")
    print("| sent | valid answered | malformed -> 4xx (OpenAI shape) | 5xx | dropped | req/s | gen tok/s | "
          "p50 s | p95 s | TTFT p50 s (stream) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {m['sent']} | {m['answered']}/{m['valid']} | {m['malformed_4xx']}/{m['malformed']} | {m['5xx']} | "
          f"{m['dropped']} | {m['req_s']:.2f} | {m['tok_s']:.1f} | {m['p50']:.2f} | {m['p95']:.2f} | "
          f"{m['ttft_p50']:.2f} |")
    print(f"\nbatching during the mixed load: mean batch {batching['mean_batch_size']}, max "
          f"{batching['max_batch_size_seen']}, decode steps {batching['decode_steps']}")
    print(f"\n## Batching speed-up: {args.speedup_clients} clients x {args.speedup_requests_per_client} greedy "
          f"chat requests, max_tokens {args.max_tokens}\n")
    print("| server | req/s | gen tok/s | p50 s | p95 s | answered |")
    print("|---|---|---|---|---|---|")
    for batch, s in speed.items():
        print(f"| --max-batch-size {batch} | {s['req_s']:.2f} | {s['tok_s']:.1f} | {s['p50']:.2f} | "
              f"{s['p95']:.2f} | {s['answered']}/{s['valid']} |")
    ratio = speed[16]["req_s"] / speed[1]["req_s"] if speed[1]["req_s"] else float("nan")
    print(f"\nspeed-up (requests/s, batch 16 vs 1): {ratio:.2f}x (goal >= 2x)")
    failed = m["5xx"] or m["dropped"] or m["answered"] != m["valid"] or m["malformed_4xx"] != m["malformed"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
