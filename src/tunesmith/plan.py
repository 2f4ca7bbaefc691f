"""`tunesmith plan`: peak memory and time per epoch of full, LoRA and QLoRA fine-tuning, predicted from the
model's config.json, the data's token lengths and the batch settings, before any weight is loaded.

The model of memory (docs/plan.md has the arithmetic and the measurements behind each constant):

    peak = max(load peak, training peak, step peak)
    training peak = overhead + weights + optimizer + max(gradients, activations)
    step peak     = overhead + master weights + optimizer + max(heap gradients, activations heap)
                    + mmapped gradients                                                           (CPU)
    load peak     = overhead + the safetensors file (mmapped) + the weights when they are cast to another dtype

Gradients and activations do not peak together in forward/backward: `zero_grad(set_to_none=True)` frees the
gradients before each forward, and backward frees each layer's saved tensors as it allocates that layer's
gradients. At the optimizer step on CPU, though, the heap still holds the memory the activations used (glibc
does not return it) and a gradient above glibc's 32 MiB mmap threshold (an embedding's) sits outside that heap:
for a small model with a large vocabulary (MiniLM) that can be the peak. The fused AdamW kernel the trainers use
adds no temporaries (the single-tensor loop added two copies of the largest parameter).
`train`/`run` call `enforce_plan` before touching the run directory and refuse a configuration whose predicted
peak is above the memory available, unless `--ignore-plan`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.config import ProjectConfig
from tunesmith.errors import ConfigError
from tunesmith.plan_device import Device, parse_device, sustained_flops
from tunesmith.plan_model import (FUSED_LAYER_TYPES, ModelShape, classifier_params,
                                  decoder_saved_outside_layers,
                                  decoder_saved_per_token, encoder_saved_per_token, head_chunk_bytes,
                                  mmapped_grad_bytes, read_shape, rebuilt_inputs, saved_adapter_elements)

MB = 2**20
# RSS of a `tunesmith train` process just before it loads the model: Python + torch + transformers + peft +
# tunesmith imported (391 MB alone), the tokenizer loaded, the data read and this plan made. Measured in the real
# process on this machine (docs/plan.md): 394-398 MB for SmolLM2; a constant, not re-measured at plan time.
PROCESS_BASELINE_MB = 400
# `import peft` (LoRA, DoRA, QLoRA only: full fine-tuning never imports it) adds 141 MB of RSS on top of torch and
# transformers (239 -> 380 MB measured), after the baseline above was taken.
PEFT_IMPORT_MB = 140
# RSS growth over the bytes autograd saves: glibc keeps freed transients of the forward pass (PEFT's fp32
# sums, attention intermediates) in its heap. Measured with saved_tensors_hooks on SmolLM2 LoRA at four batch
# shapes (8x120, 16x64, 4x256, 2x512 tokens): 1.23-1.39; docs/plan.md has the table.
CPU_ALLOCATOR_FACTOR = 1.3
CUDA_ALLOCATOR_FACTOR = 1.1  # the caching allocator's rounding and fragmentation: an assumption, not measured
CUDA_CONTEXT_MB = 500  # CUDA context + cuBLAS workspace; not in max_memory_allocated but it occupies the GPU
HEADROOM = 0.85  # a recommendation must leave 15% of the memory free: the model is good to about +-25%
NF4_BYTES = 0.5 + 0.127 / 8  # 4-bit weights + double-quantized constants (8-bit absmax per 64, fp32 per 256 blocks)
MAX_TOKENIZED_ROWS = 4000  # rows tokenized exactly (chat template + labels); more are sampled for the label share
METHODS = ("full", "lora", "qlora")


@dataclass
class TokenStats:
    rows: int  # training rows: cleaned, and after the eval split when data.eval is not given
    lengths: list[int]  # tokens per row after truncation to max_seq_len, longest first
    labels: list[int]  # labelled tokens per row, same order (classification: 1 per row)
    max_seq_len: int
    num_labels: int = 0  # outputs of a classification/regression head (0: generation)
    sampled: bool = False

    def worst_batch(self, micro_batch_size: int) -> tuple[int, int, int]:
        """(rows, padded width, labelled tokens) of the heaviest micro-batch: length grouping puts the longest
        rows together, so it is the micro_batch_size longest rows padded to the longest."""
        n = min(micro_batch_size, len(self.lengths))
        return n, self.lengths[0], sum(self.labels[:n])

    def epoch_tokens(self, micro_batch_size: int) -> tuple[int, float]:
        """Padded tokens per epoch and the mean padded width, for length-grouped batches."""
        padded = sum(self.lengths[i] * min(micro_batch_size, len(self.lengths) - i)
                     for i in range(0, len(self.lengths), micro_batch_size))
        batches = math.ceil(len(self.lengths) / micro_batch_size)
        return padded, padded / max(batches * micro_batch_size, 1)


@dataclass
class Estimate:
    method: str
    micro_batch_size: int
    weights_mb: float = 0.0
    grads_mb: float = 0.0
    optimizer_mb: float = 0.0
    activations_mb: float = 0.0
    overhead_mb: float = 0.0
    peak_mb: float = 0.0
    load_peak_mb: float = 0.0
    fits: str = "n/a"  # yes (<= 85% of memory) | tight (<= 100%) | no | n/a
    seconds_per_epoch: float | None = None
    trainable_params: int = 0
    note: str = ""


@dataclass
class Plan:
    device: Device
    model: dict
    data: dict
    precision: str
    throughput: str
    configured: dict
    estimates: list[Estimate]
    recommendation: dict = field(default_factory=dict)

    def estimate(self, method: str) -> Estimate:
        return next(e for e in self.estimates if e.method == method)

    def to_json(self) -> dict:
        out = asdict(self)
        out["device"] = {**asdict(self.device), "label": self.device.label}
        out["headroom"] = HEADROOM
        return out


# --- data ------------------------------------------------------------------------------------------------------

def token_stats(config: ProjectConfig, model_dir: str, shape: ModelShape, tokenizer=None) -> TokenStats:
    """Tokenize the training data the way the pipeline does (chat template, completion-only labels, truncation
    to data.max_seq_len clipped to the model's limit). Nothing is written and no weights are loaded."""
    from tunesmith.data.check import check, require_usable, token_lengths
    from tunesmith.data.clean import CleanOptions, CleanResult, clean_examples
    from tunesmith.data.split import split
    from tunesmith.data.tokenize import ensure_chat_template, tokenize_example, with_system_prompt
    from tunesmith.models.load import load_tokenizer

    if config.data.train is None:
        raise ConfigError("data.train is not set", "add 'data: {train: path/to/train.jsonl}' to the project file "
                          "or pass --set data.train=FILE")
    examples = require_usable(check(config.data.train, config.data.format, config.data.columns, config.task,
                                    quality=False), "train")
    # The rows the trainer will see: cleaned, and split (seeded, so the same rows) as pipeline.prepare_data does.
    result = CleanResult(rows_in=len(examples), rows_out=0)
    clean_examples(examples, CleanOptions(**config.data.clean.model_dump()), result)
    examples = result.examples
    if config.data.eval is None and len(examples) > 1:
        examples, _ = split(examples, config.data.eval_fraction, config.train.seed)
    max_len = min(config.data.max_seq_len, shape.max_positions)
    rows = len(examples)
    tokenizer = tokenizer or load_tokenizer(model_dir)
    generative = config.task == "classification" and config.model.classifier == "generative"
    if generative:  # the chat rows data/genclass.py trains on: the label list, the text, the label as answer
        from tunesmith.data.formats import Example
        from tunesmith.data.genclass import chat, system_prompt

        system = system_prompt(sorted({e.label for e in examples if e.label is not None}), config.data.system_prompt)
        examples = [Example(chat(system, e.text or "", e.label), e.file, e.line) for e in examples]
    elif config.task != "generation":  # text in, one prediction per row: [CLS] text [SEP] (encoders)
        encoded = tokenizer([e.input_text for e in examples], truncation=True, max_length=max_len)["input_ids"]
        lengths = sorted((len(ids) for ids in encoded), reverse=True)
        classes = {label for e in examples for label in (e.labels if e.labels is not None else [e.label])}
        classes.discard(None)
        num_labels = len(classes) if config.task != "regression" else 1
        return TokenStats(rows, lengths, [1] * len(lengths), max_len, max(num_labels, 1))
    ensure_chat_template(tokenizer)
    sampled = len(examples) > MAX_TOKENIZED_ROWS
    chosen = random.Random(0).sample(examples, MAX_TOKENIZED_ROWS) if sampled else examples
    pairs = []
    for example in chosen:
        tokens = tokenize_example(tokenizer, with_system_prompt(example.messages, config.data.system_prompt), max_len)
        if tokens is not None:
            pairs.append((len(tokens.input_ids), tokens.n_labels))
    if sampled:  # every row's length (fast batch tokenization), the labelled share from the sample
        share = sum(n for _, n in pairs) / max(sum(t for t, _ in pairs), 1)
        texts = [tokenizer.apply_chat_template(with_system_prompt(e.messages, config.data.system_prompt),
                                               tokenize=False) for e in examples]
        pairs = [(t, round(t * share)) for t in (min(n, max_len) for n in token_lengths(tokenizer, texts))]
    if not pairs:
        raise ConfigError(f"no train row has an answer token within data.max_seq_len={max_len}",
                          "raise data.max_seq_len or shorten the prompts")
    pairs.sort(reverse=True)
    return TokenStats(rows, [t for t, _ in pairs], [n for _, n in pairs], max_len, sampled=sampled)


# --- memory and time ---------------------------------------------------------------------------------------------

def _file_bytes(model_dir: str, params: int) -> int:
    files = list(Path(model_dir).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else params * 4


def _compute(config: ProjectConfig, method: str, device: Device, lengths: list[int]):
    """The precision the trainer will use: train/precision.py for generation; classification and regression
    (train/classify.py) keep fp32 weights, under bf16 autocast on CUDA or with train.precision: bf16, and
    transformers' default attention."""
    from tunesmith.train.precision import Compute, resolve_compute, row_width

    if config.task != "generation" and config.model.classifier == "head":
        import torch

        bf16 = config.train.precision == "bf16" or (config.train.precision == "auto" and device.kind == "cuda")
        return Compute(torch.float32, torch.bfloat16 if bf16 else None, None)

    return resolve_compute(config.train.precision, config.model.dtype, "lora" if method == "qlora" else method,
                           device.kind, row_width(lengths))


def estimate(config: ProjectConfig, shape: ModelShape, stats: TokenStats, device: Device, method: str,
             micro_batch_size: int, model_dir: str, flops_per_s: float = 0.0) -> Estimate:
    est = Estimate(method, micro_batch_size)
    if method == "qlora" and device.kind != "cuda":
        est.note = "CUDA only (method.kind: lora here)"
        return est
    compute = _compute(config, method, device, stats.lengths)
    weight_bytes = compute.weights.itemsize
    autocast = compute.autocast is not None
    c = 2 if (autocast or weight_bytes == 2) else weight_bytes  # the dtype the matmuls run in
    num_labels = stats.num_labels  # 0 for generation
    lm_head = num_labels == 0
    params = shape.params(num_labels)
    targets = None if config.method.target_modules in ("auto", "all-linear") else list(config.method.target_modules)
    classifier = classifier_params(shape, num_labels) if num_labels else 0
    lora = shape.lora_params(config.method.r, targets) + classifier  # PEFT also trains a classifier head in full

    # Weights. full: fp32 master weights, plus the bf16 copies autocast caches from forward until backward ends.
    if method == "full":
        trainable = params
        # (the chunked LM head casts its weight per chunk, outside autocast's cache: no lasting copy)
        weights = params * weight_bytes + shape.linear_params * 2 * autocast
    elif method == "qlora":
        trainable = lora
        weights = shape.linear_params * NF4_BYTES + (params - shape.linear_params) * 2 + lora * 4
    else:
        trainable = lora
        weights = params * weight_bytes + lora * 4  # frozen base in its dtype, fp32 adapters
    grads, optimizer = trainable * 4, trainable * 8  # fp32 gradients; AdamW's exp_avg and exp_avg_sq

    rows, width, labelled = stats.worst_batch(micro_batch_size)
    # Eager attention's s x s scores: decoders on CPU (train/precision.py); encoders train with dropout on the
    # attention probabilities, which sends SDPA to its math path on CPU, scores included.
    eager = device.kind == "cpu" and (compute.attention == "eager" or shape.is_encoder)
    # The trainer's fused LoRA layers (train/lora_fast.py) save their inputs in the compute dtype, not fp32 copies.
    fused = (method == "lora" and config.method.kind == "lora" and config.method.lora_dropout == 0
             and not autocast and not shape.is_encoder)
    # On a CPU it also replaces the norms, MLP and attention (train/fused_layers.py), whose attention takes the
    # matmul path for rows up to EAGER_MAX_TOKENS, as the worst batch's rows decide.
    fused_layers = _fused_layers(config, method, shape, device, autocast, lm_head)
    if fused_layers:
        from tunesmith.train.precision import EAGER_MAX_TOKENS

        eager = width <= EAGER_MAX_TOKENS
    if shape.is_encoder:
        per_token = encoder_saved_per_token(shape, "full" if method == "full" else "lora", c, autocast,
                                            config.method.r, targets, width, eager, fused=fused)
    else:
        per_token = decoder_saved_per_token(shape, "full" if method == "full" else "lora", c, autocast,
                                            config.method.r, targets, width, eager, fused=fused,
                                            fused_layers=fused_layers)
    if config.train.gradient_checkpointing:
        # Each layer keeps only its input; backward recomputes one layer at a time, holding its activations.
        saved = (shape.layers * shape.hidden * (4 if autocast else weight_bytes) + per_token) * rows * width
    else:
        saved = shape.layers * per_token * rows * width
    if fused:
        # each layer's adapter matrices, cast to the compute dtype and kept for backward
        saved += saved_adapter_elements(shape, config.method.r, targets, grouped=fused_layers) * c
    residual = 4 if autocast else weight_bytes  # the residual stream's dtype: fp32 under autocast
    # The grouped q/k/v product rebuilds from the first norm's input only where the LoRA layers are fused (no
    # dropout): otherwise nothing is grouped and that input, the frozen embedding's output, is kept by nobody.
    first_norm_kept = fused and fused_layers and "q_proj" in rebuilt_inputs(shape, targets)
    head = 0.0
    if lm_head:  # final norm, and the chunked LM head on labelled positions only (train/loss.py)
        saved += decoder_saved_outside_layers(shape, "full" if method == "full" else "lora", residual, rows * width,
                                              labelled, first_norm_kept)
        head = head_chunk_bytes(shape, "full" if method == "full" else "lora", residual, labelled)
    factor = CPU_ALLOCATOR_FACTOR if device.kind == "cpu" else CUDA_ALLOCATOR_FACTOR
    activations = saved * factor + head

    file_bytes = _file_bytes(model_dir, params)
    if device.kind == "cpu":
        overhead = (PROCESS_BASELINE_MB + (PEFT_IMPORT_MB if method != "full" else 0)) * MB
        # A file already in the weights' dtype is used in place (mmapped pages count once); a cast holds both.
        same_dtype = abs(file_bytes / max(params, 1) - weight_bytes) < 0.5
        cast = 0 if same_dtype else params * weight_bytes
        load = PROCESS_BASELINE_MB * MB + file_bytes + cast  # peft is imported after the model is loaded
    else:
        overhead = CUDA_CONTEXT_MB * MB
        load = overhead + weights
    peak = max(load, overhead + weights + optimizer + max(grads, activations))
    if device.kind == "cpu":
        # The optimizer step: every gradient is live, the heap still holds what the activations occupied (glibc
        # keeps freed heap memory mapped) and gradients too big for the heap (mmapped_grad_bytes) come on top.
        # The fused AdamW kernel (train/loop.adamw) makes no temporaries; autocast's bf16 weight copies are gone
        # by then (freed once backward has used them).
        master = weights - (shape.linear_params * 2 * autocast if method == "full" else 0)
        big_grads = mmapped_grad_bytes(shape, method, lm_head)
        peak = max(peak, overhead + master + optimizer + max(grads - big_grads, saved * factor) + big_grads)
    est.weights_mb, est.grads_mb, est.optimizer_mb = weights / MB, grads / MB, optimizer / MB
    est.activations_mb, est.overhead_mb, est.peak_mb, est.load_peak_mb = activations / MB, overhead / MB, \
        peak / MB, load / MB
    est.trainable_params = trainable
    est.fits = "yes" if peak <= HEADROOM * device.memory_bytes else "tight" if peak <= device.memory_bytes else "no"
    if flops_per_s > 0:
        est.seconds_per_epoch = epoch_flops(shape, stats, method, micro_batch_size, lora, lm_head) / flops_per_s
    if method == "qlora":
        est.note = "4-bit NF4 base weights (bitsandbytes, CUDA)"
    elif config.method.kind == "dora" and method == "lora":
        est.note = "dora: as lora, plus a weight-norm per adapted layer and step (not modeled)"
    return est


def epoch_flops(shape: ModelShape, stats: TokenStats, method: str, micro_batch_size: int, lora: int,
                lm_head: bool = True) -> float:
    """FLOPs of one epoch. Convention: a matmul parameter costs 2 FLOPs per token forward and 4 backward
    (input gradient + weight gradient), so full fine-tuning is 6·N per token; a frozen base skips the weight
    gradient, so LoRA/QLoRA is 4·N plus 6 per adapter parameter. Attention adds 4·s·d per token and layer forward
    (QKᵀ and probs·V), 3x with backward. The LM head runs on labelled tokens only."""
    tokens, mean_width = stats.epoch_tokens(micro_batch_size)
    body = shape.linear_params
    per_token = (6 * body if method == "full" else 4 * body + 6 * lora)
    per_token += 3 * 4 * mean_width * shape.heads * shape.head_dim * shape.layers
    labelled = sum(stats.labels)
    head = 0 if not lm_head else (6 if method == "full" else 4) * shape.vocab * shape.hidden * labelled
    return per_token * tokens + head


# --- the plan --------------------------------------------------------------------------------------------------

def _divisors(global_batch_size: int) -> list[int]:
    return [m for m in range(1, global_batch_size + 1) if global_batch_size % m == 0]


def recommend(config, shape, stats, device, model_dir, flops_per_s) -> dict:
    """The configured method with the largest micro-batch (a divisor of global_batch_size, so accumulation keeps
    the step's size) that fits with headroom; if none does, the next cheaper method."""
    order = {"full": ["full", "lora", "qlora"], "qlora": ["qlora", "lora"]}.get(config.method.kind,
                                                                               [config.method.kind, "qlora"])
    for method in order:
        if method == "qlora" and device.kind != "cuda":
            continue
        sizes = _divisors(config.train.global_batch_size)
        fitting = [m for m in sizes if estimate(config, shape, stats, device, "lora" if method == "dora" else method,
                                                m, model_dir).fits == "yes"]
        if fitting:
            best = max(fitting)
            chosen = estimate(config, shape, stats, device, "lora" if method == "dora" else method, best, model_dir,
                              flops_per_s)
            return {"method": method, "micro_batch_size": best, "peak_mb": round(chosen.peak_mb),
                    "seconds_per_epoch": chosen.seconds_per_epoch,
                    "set": f"--set method.kind={method} --set train.micro_batch_size={best}"}
    return {"method": None, "micro_batch_size": None,
            "set": "nothing fits with 15% headroom: lower data.max_seq_len, or plan a device with more memory"}


def make_plan(config: ProjectConfig, model_dir: str, device: Device | str | None = None, measure: bool = True,
              tokenizer=None) -> Plan:
    if not isinstance(device, Device):
        device = parse_device(device)
    shape = read_shape(model_dir)
    stats = token_stats(config, model_dir, shape, tokenizer)
    configured = "lora" if config.method.kind == "dora" else config.method.kind
    compute = _compute(config, configured, device, stats.lengths)
    flops, throughput = sustained_flops(device, compute.weights.itemsize == 2 or compute.autocast is not None,
                                        measure)
    mbs = config.train.micro_batch_size
    if config.train.micro_batch_tokens:  # the heaviest pass: as many of the longest rows as the budget holds
        mbs = max(1, min(config.train.global_batch_size, config.train.micro_batch_tokens // stats.lengths[0]))
    estimates = [estimate(config, shape, stats, device, m, mbs, model_dir, flops) for m in METHODS]
    rows, width, labelled = stats.worst_batch(mbs)
    return Plan(device=device,
                model={"base": config.model.base, "path": model_dir, "type": shape.model_type,
                       "params": shape.params(stats.num_labels),
                       "layers": shape.layers, "hidden": shape.hidden, "vocab": shape.vocab},
                data={"rows": stats.rows, "max_seq_len": stats.max_seq_len, "longest_row": stats.lengths[0],
                      "mean_tokens": round(sum(stats.lengths) / len(stats.lengths), 1),
                      "worst_micro_batch": {"rows": rows, "width": width, "labelled_tokens": labelled},
                      "sampled": stats.sampled, "num_labels": stats.num_labels},
                precision=compute.name + _attention_name(config, shape, device, compute, stats.num_labels),
                throughput=throughput, configured={"method": config.method.kind, "micro_batch_size": mbs},
                estimates=estimates,
                recommendation=recommend(config, shape, stats, device, model_dir, flops))


def _fused_layers(config: ProjectConfig, method: str, shape: ModelShape, device: Device, autocast: bool,
                  lm_head: bool) -> bool:
    """Whether the trainer replaces the norms, MLP and attention with train/fused_layers.py (train/loop.fit: LoRA
    on a CPU without autocast or train.compile, on the model types that module reproduces)."""
    return (method == "lora" and config.method.kind == "lora" and not autocast and lm_head and device.kind == "cpu"
            and not config.train.compile and shape.model_type in FUSED_LAYER_TYPES)


def _attention_name(config: ProjectConfig, shape: ModelShape, device: Device, compute, num_labels: int) -> str:
    if _fused_layers(config, config.method.kind, shape, device, compute.autocast is not None, not num_labels):
        return ", fused attention (train/fused_layers.py)"
    return f", {compute.attention} attention" if compute.attention else ""


def enforce_plan(config: ProjectConfig, model_dir: str, ignore: bool = False) -> Plan | None:
    """The check `train`/`run` make before the run directory is touched or a weight is loaded: refuse a
    configuration predicted not to fit (exit 1 with the table and the fix) unless ignore (`--ignore-plan`)."""
    import torch

    device_kind = config.train.device
    if device_kind == "auto":
        device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    elif device_kind == "cuda" and not torch.cuda.is_available():
        return None  # the trainer says so itself (train.loop.pick_device), with its fix
    if config.method.kind == "qlora" and device_kind == "cpu":
        raise ConfigError("method.kind 'qlora' needs a CUDA GPU (4-bit NF4 weights through bitsandbytes); this run "
                          "would train on the CPU", "set method.kind: lora (the same adapters on a bf16 base)")
    if ignore:
        return None
    from tunesmith.errors import ModelError

    try:
        plan = make_plan(config, model_dir, device_kind, measure=False)
    except ModelError as exc:  # an architecture the planner does not know: train without a prediction
        from tunesmith.console import console

        console.print(f"[yellow]no memory plan: {exc.message}[/yellow]")
        return None
    chosen = plan.estimate("lora" if config.method.kind == "dora" else config.method.kind)
    if chosen.fits == "tight":
        from tunesmith.console import console

        console.print(f"[yellow]predicted peak {chosen.peak_mb / 1024:.1f} GiB is above 85% of "
                      f"{plan.device.label}: it may not fit (`tunesmith plan` shows the estimate)[/yellow]")
    if chosen.fits == "no":
        from tunesmith.cli_plan import print_plan

        print_plan(plan)
        rec = plan.recommendation
        fix = (f"use {rec['set']} (predicted peak {rec['peak_mb'] / 1024:.1f} GiB)" if rec.get("method")
               else rec["set"])
        raise ConfigError(f"method {config.method.kind} with micro_batch_size {config.train.micro_batch_size} is "
                          f"predicted to need {chosen.peak_mb / 1024:.1f} GiB at its peak, but only "
                          f"{plan.device.memory_bytes / 2**30:.1f} GiB of {plan.device.kind} memory is available",
                          f"{fix}; or pass --ignore-plan to train anyway (`tunesmith plan` shows the estimate)")
    return plan
