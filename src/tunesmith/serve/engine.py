"""Continuous batching over the KV cache: one worker thread runs every generation, whoever asked for it.

Requests wait in a queue. The worker admits as many as there are free rows (`max_batch_size`), prefills them
together (left-padded), samples their first token, and merges their KV cache into the running batch; then it
runs decode steps of one token for every row at once. A row that finishes (end-of-turn token, stop string,
max_tokens, context full, client gone) leaves the batch at once and a waiting request takes its place at the
next step, so a long answer never holds short ones back and nobody waits for a whole batch to drain.

Layout of the running batch: every row is left-padded, so the cache is [rows x kv_heads x T x head_dim] per
layer and `mask` [rows x T] marks each row's real tokens; positions are per row (`_Row.length`), so a row's
RoPE angles do not depend on the padding. New rows are merged by left-padding whichever side is shorter; when
rows leave, the columns that no remaining row uses are cut from the left. Only the last position's logits are
computed (`logits_to_keep=1`): [rows x vocab] for the current step, never [rows x T x vocab].
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tunesmith.serve.textstream import TextStream

# Prefill cost grows with rows x padded length (and attention with length squared): admitted prompts are
# prefilled in groups of at most this many padded tokens, e.g. 8 prompts of 512 tokens, so a burst of long
# prompts cannot allocate gigabytes of attention scores at once.
PREFILL_TOKEN_BUDGET = 4096


class EngineBusy(Exception):
    """The waiting queue is full; the caller should answer 429 and let the client retry."""


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[dict], None]  # called on the worker thread: {"type": "delta"|"done"|"error", ...}
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    cancelled: bool = False  # set by the caller (client disconnected); the row leaves at the next step


@dataclass
class _Row:
    request: GenerationRequest
    stream: TextStream
    generator: torch.Generator | None
    length: int  # this row's tokens in the cache = the position of the next token fed
    next_token: int = -1  # sampled, not fed yet
    generated: int = 0


@dataclass
class BatchStats:
    """What the batching did, for /health and the benchmarks."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0  # requests whose client went away; their rows were dropped
    generated_tokens: int = 0
    decode_steps: int = 0
    prefills: int = 0
    decode_batch_sizes: Counter = field(default_factory=Counter)  # rows per decode step -> steps

    def to_json(self, waiting: int, active: int) -> dict:
        steps = max(self.decode_steps, 1)
        return {"requests": self.requests, "finished": self.finished, "cancelled": self.cancelled,
                "generated_tokens": self.generated_tokens,
                "decode_steps": self.decode_steps, "prefills": self.prefills, "waiting": waiting, "active": active,
                "max_batch_size_seen": max(self.decode_batch_sizes, default=0),
                "mean_batch_size": round(sum(k * v for k, v in self.decode_batch_sizes.items()) / steps, 3),
                "batch_size_histogram": {str(k): v for k, v in sorted(self.decode_batch_sizes.items())}}


def sample(logits: torch.Tensor, rows: list[_Row]) -> list[int]:
    """One token per row: argmax where temperature is 0 (as model.generate's greedy search), else
    temperature + nucleus (top_p) sampling with the row's own seeded generator."""
    logits = logits.float()
    tokens = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        request = row.request
        if request.temperature <= 0:
            continue
        probs = torch.softmax(logits[i] / request.temperature, -1)
        if request.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set of tokens whose mass reaches top_p; the most likely token always stays.
            sorted_probs = sorted_probs * (sorted_probs.cumsum(-1) - sorted_probs < request.top_p)
            tokens[i] = int(order[torch.multinomial(sorted_probs, 1, generator=row.generator)])
        else:
            tokens[i] = int(torch.multinomial(probs, 1, generator=row.generator))
    return tokens


def _left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Engine:
    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, max_queue: int = 256,
                 max_context: int | None = None, batch_wait_s: float = 0.005):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None) or 2048
        # A short wait when idle lets requests that arrive together start together: one prefill, one batch.
        self.batch_wait_s = batch_wait_s
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {t for t in [*eos, tokenizer.eos_token_id] if t is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self.pending: queue.Queue[GenerationRequest] = queue.Queue()
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        self.rows: list[_Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the caller's side (any thread) ----

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="tunesmith-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest) -> None:
        if not request.prompt_ids or request.max_new_tokens < 1:
            raise ValueError("a request needs at least one prompt token and max_new_tokens >= 1")
        if self.pending.qsize() >= self.max_queue:
            raise EngineBusy(f"{self.pending.qsize()} requests are waiting already")
        self.stats.requests += 1
        self.pending.put(request)

    def stream(self, prompt_ids: list[int], max_new_tokens: int, **options) -> Iterator[dict]:
        """Blocking helper for predict and chat: yields the events of one request until it is done."""
        events: queue.SimpleQueue[dict] = queue.SimpleQueue()
        request = GenerationRequest(list(prompt_ids), max_new_tokens, events.put, **options)
        self.submit(request)
        try:
            while True:
                event = events.get()
                yield event
                if event["type"] != "delta":
                    return
        finally:
            request.cancelled = True  # the consumer stopped early: free the row

    def stats_json(self) -> dict:
        with self._stats_lock:  # the worker updates the histogram while /health reads it
            return self.stats.to_json(self.pending.qsize(), len(self.rows))

    # ---- the worker thread ----

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopping.is_set():
                try:
                    self._admit()
                    if self.rows:
                        self._decode_step()
                except Exception as exc:  # a failing step must not kill the server: fail what is in flight
                    for row in self.rows:
                        row.request.emit({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
                    self.rows, self.cache, self.mask = [], None, None

    def _admit(self) -> None:
        free = self.max_batch_size - len(self.rows)
        if free <= 0:
            return
        new: list[GenerationRequest] = []
        try:
            if not self.rows:  # idle: block briefly, then give simultaneous arrivals a moment to join
                new.append(self.pending.get(timeout=0.05))
                deadline = time.monotonic() + self.batch_wait_s
                while len(new) < free:
                    new.append(self.pending.get(timeout=max(0.0, deadline - time.monotonic())))
            while len(new) < free:
                new.append(self.pending.get_nowait())
        except queue.Empty:
            pass
        self.stats.cancelled += sum(r.cancelled for r in new)
        new = [r for r in new if not r.cancelled]
        if not new:
            return
        new.sort(key=lambda r: len(r.prompt_ids))  # groups of similar length pad less
        groups: list[list[GenerationRequest]] = [[]]
        for request in new:
            if groups[-1] and (len(groups[-1]) + 1) * len(request.prompt_ids) > PREFILL_TOKEN_BUDGET:
                groups.append([])
            groups[-1].append(request)
        for group in groups:
            try:
                self._prefill(group)
            except Exception as exc:  # fail these requests only; the running rows are untouched
                for request in group:
                    request.emit({"type": "error", "message": f"{type(exc).__name__}: {exc}"})

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, request in enumerate(requests):
            ids[i, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[i, width - len(request.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=DynamicCache(),
                         use_cache=True, logits_to_keep=1)
        rows = [_Row(r, TextStream(self.tokenizer, r.stop), self._generator(r), len(r.prompt_ids)) for r in requests]
        tokens = sample(out.logits[:, -1], rows)
        self.stats.prefills += 1
        keep = [i for i, (row, token) in enumerate(zip(rows, tokens)) if self._advance(row, token)]
        if not keep:
            return
        cache, mask = out.cache, mask
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=self.device)
            cache.batch_select_indices(index)
            mask = mask[index]
        self._merge(cache, mask, [rows[i] for i in keep])

    def _merge(self, cache, mask: torch.Tensor, rows: list[_Row]) -> None:
        from transformers import DynamicCache

        if not self.rows:
            self.cache, self.mask, self.rows = cache, mask, rows
            self._trim_left()
            return
        width = max(self.mask.shape[1], mask.shape[1])
        pad_old, pad_new = width - self.mask.shape[1], width - mask.shape[1]
        layers = [(torch.cat([_left_pad(old.keys, pad_old, 2), _left_pad(new.keys, pad_new, 2)]),
                   torch.cat([_left_pad(old.values, pad_old, 2), _left_pad(new.values, pad_new, 2)]))
                  for old, new in zip(self.cache.layers, cache.layers)]
        self.cache = DynamicCache(layers)
        self.mask = torch.cat([_left_pad(self.mask, pad_old, 1), _left_pad(mask, pad_new, 1)])
        self.rows = self.rows + rows

    def _decode_step(self) -> None:
        rows = self.rows
        ids = torch.tensor([[row.next_token] for row in rows], device=self.device)
        positions = torch.tensor([[row.length] for row in rows], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        for row in rows:
            row.length += 1
        tokens = sample(out.logits[:, -1], rows)
        with self._stats_lock:
            self.stats.decode_steps += 1
            self.stats.decode_batch_sizes[len(rows)] += 1
        keep = [i for i, (row, token) in enumerate(zip(rows, tokens)) if self._advance(row, token)]
        if len(keep) == len(rows):
            return
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.rows = [rows[i] for i in keep]
        self._trim_left()

    def _trim_left(self) -> None:
        """Cut the leading columns that no row uses any more (padding of rows that left)."""
        cut = int(self.mask.any(0).int().argmax())
        if cut > 0:
            self.mask = self.mask[:, cut:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]

    def _advance(self, row: _Row, token: int) -> bool:
        """Take the row's new token: emit text, decide whether it goes on. Returns True to keep the row."""
        request = row.request
        if request.cancelled:
            self.stats.cancelled += 1
            return False
        row.generated += 1
        self.stats.generated_tokens += 1
        if token in self.eos_ids:
            return self._finish(row, "stop")
        delta = row.stream.push(token)
        if delta:
            request.emit({"type": "delta", "text": delta})
        if row.stream.stopped:
            return self._finish(row, "stop")
        # The sampled token still has to be fed at position row.length; there must be room for it.
        if row.generated >= request.max_new_tokens or row.length >= self.max_context:
            return self._finish(row, "length")
        row.next_token = token
        return True

    def _finish(self, row: _Row, reason: str) -> bool:
        tail = row.stream.finish()
        if tail:
            row.request.emit({"type": "delta", "text": tail})
        self.stats.finished += 1
        row.request.emit({"type": "done", "finish_reason": reason, "text": row.stream.text,
                          "prompt_tokens": len(row.request.prompt_ids), "completion_tokens": row.generated})
        return False

    def _generator(self, request: GenerationRequest) -> torch.Generator | None:
        if request.temperature <= 0:
            return None
        seed = request.seed if request.seed is not None else random.getrandbits(63)
        return torch.Generator(device=self.device).manual_seed(seed)
