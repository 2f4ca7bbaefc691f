"""A model's shape read from its config.json alone (no weights), and what follows from the shape: parameter
counts, LoRA parameter counts, and the bytes autograd keeps per token per layer for the backward pass.

Families: Llama-style decoders (llama, mistral, qwen2, qwen3, gemma: RMSNorm, gated MLP, grouped KV heads),
GPT-2, and BERT/RoBERTa-style encoders. The counts are checked against `sum(p.numel())` of models built from
configs in tests/test_plan.py (SmolLM2-135M: 134,515,008; all-MiniLM-L6-v2: 22,713,216).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ModelError

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma")
ENCODERS = ("bert", "roberta", "xlm-roberta")
SUPPORTED = LLAMA_LIKE + ("gpt2",) + ENCODERS


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    max_positions: int
    linears: tuple[Linear, ...]  # the projections of one layer
    layer_extra: int  # per-layer parameters outside the projections (norm weights and biases)
    outside_layers: int  # embeddings, final norm, pooler: parameters outside the layers and the LM head

    @property
    def is_encoder(self) -> bool:
        return self.model_type in ENCODERS

    @property
    def layer_params(self) -> int:
        return sum(p.in_features * p.out_features + p.bias * p.out_features for p in self.linears) + self.layer_extra

    @property
    def linear_params(self) -> int:
        """Parameters of all the layers' projection weights: what 4-bit quantization (QLoRA) shrinks."""
        return self.layers * sum(p.in_features * p.out_features for p in self.linears)

    @property
    def head_params(self) -> int:
        """The LM head's own weights (0 when tied to the input embedding, and for encoders)."""
        return 0 if self.tied or self.is_encoder else self.vocab * self.hidden

    def params(self, num_labels: int = 0) -> int:
        """Total parameters; num_labels > 0: the sequence-classification model (its head instead of an LM head)."""
        body = self.outside_layers + self.layers * self.layer_params
        return body + (classifier_params(self, num_labels) if num_labels else self.head_params)

    def lora_params(self, r: int, targets: list[str] | None) -> int:
        """A (r x in) + B (out x r) per adapted projection; targets None: every projection."""
        chosen = targeted(self.linears, targets)
        return self.layers * sum(r * (p.in_features + p.out_features) for p in chosen)


def targeted(linears, targets: list[str] | None) -> list[Linear]:
    """The projections PEFT adapts: every one (targets None), else those whose name ends with a target."""
    if targets is None:
        return list(linears)
    return [p for p in linears if any(p.name == t or p.name.endswith("." + t) for t in targets)]


# Projections that train/lora_fast.group_forward runs as one product when every member is adapted.
LORA_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def rebuilt_inputs(shape: ModelShape, targets: list[str] | None) -> set[str]:
    """Projections whose input the trainer's fused layers (train/fused_layers.py) rebuild in backward instead of
    keeping it: the members of a fully adapted LORA_GROUPS group (from the norm before them) and down_proj
    (from gate and up)."""
    names = {p.name for p in targeted(shape.linears, targets)}
    return {name for group in LORA_GROUPS if names.issuperset(group) for name in group} | ({"down_proj"} & names)


def saved_adapter_elements(shape: ModelShape, r: int, targets: list[str] | None, grouped: bool) -> int:
    """Elements of the adapter matrices the fused LoRA layers keep for backward, cast to the compute dtype: A and
    B per projection; a group's B as one block-diagonal matrix [sum of outs x sum of ranks] (zeros included)."""
    chosen = {p.name: p for p in targeted(shape.linears, targets)}
    per_layer = sum(r * (p.in_features + p.out_features) for p in chosen.values())
    if grouped:
        for group in LORA_GROUPS:
            if all(name in chosen for name in group):
                outs = sum(chosen[name].out_features for name in group)
                per_layer += outs * r * len(group) - outs * r  # block-diagonal B instead of the separate Bs
    return shape.layers * per_layer


def classifier_params(shape: ModelShape, num_labels: int) -> int:
    if not shape.is_encoder:  # *ForSequenceClassification decoders: score = Linear(hidden, labels, bias=False)
        return shape.hidden * num_labels
    if shape.model_type == "bert":  # BertForSequenceClassification: pooled [CLS] -> Linear(hidden, labels)
        return shape.hidden * num_labels + num_labels
    # RoBERTa: dense(hidden, hidden) + out_proj(hidden, labels) on <s>, and no pooler (counted in outside_layers)
    return shape.hidden * shape.hidden + shape.hidden + shape.hidden * num_labels + num_labels


def _get(config: dict, *names: str, default=None):
    for name in names:
        if config.get(name) is not None:
            return config[name]
    if default is not None:
        return default
    raise ModelError(f"config.json has none of {', '.join(names)}",
                     "point model.base at a complete Hugging Face model folder")


def _llama_like(c: dict) -> ModelShape:
    h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or h // heads
    kind = c["model_type"]
    qkv_bias = kind == "qwen2" or bool(c.get("attention_bias"))  # Qwen2 always has q/k/v biases
    o_bias = bool(c.get("attention_bias")) and kind != "qwen2"
    mlp_bias = bool(c.get("mlp_bias"))
    linears = (Linear("q_proj", h, heads * hd, qkv_bias), Linear("k_proj", h, kv * hd, qkv_bias),
               Linear("v_proj", h, kv * hd, qkv_bias), Linear("o_proj", heads * hd, h, o_bias),
               Linear("gate_proj", h, i, mlp_bias), Linear("up_proj", h, i, mlp_bias),
               Linear("down_proj", i, h, mlp_bias))
    extra = 2 * h + (2 * hd if kind == "qwen3" else 0)  # two RMSNorm weights; Qwen3 adds q_norm and k_norm
    tied = bool(c.get("tie_word_embeddings", kind == "gemma"))
    return ModelShape(kind, c["vocab_size"], h, i, n, heads, kv, hd, tied,
                      c.get("max_position_embeddings") or 2048, linears, extra, c["vocab_size"] * h + h)


def _gpt2(c: dict) -> ModelShape:
    h, n, heads = _get(c, "n_embd", "hidden_size"), _get(c, "n_layer", "num_hidden_layers"), _get(c, "n_head")
    i = c.get("n_inner") or 4 * h
    positions = _get(c, "n_positions", "max_position_embeddings")
    linears = (Linear("c_attn", h, 3 * h, True), Linear("attn.c_proj", h, h, True), Linear("c_fc", h, i, True),
               Linear("mlp.c_proj", i, h, True))
    return ModelShape("gpt2", c["vocab_size"], h, i, n, heads, heads, h // heads,
                      bool(c.get("tie_word_embeddings", True)), positions, linears, 4 * h,
                      c["vocab_size"] * h + positions * h + 2 * h)


def _encoder(c: dict) -> ModelShape:
    h, i, n, heads = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"]
    positions = c.get("max_position_embeddings") or 512
    linears = (Linear("query", h, h, True), Linear("key", h, h, True), Linear("value", h, h, True),
               Linear("attention.output.dense", h, h, True), Linear("intermediate.dense", h, i, True),
               Linear("output.dense", i, h, True))
    embeddings = (c["vocab_size"] + positions + (c.get("type_vocab_size") or 0)) * h + 2 * h
    pooler = h * h + h if c["model_type"] == "bert" else 0  # RoBERTa's classification model drops the pooler
    return ModelShape(c["model_type"], c["vocab_size"], h, i, n, heads, heads, h // heads, True, positions,
                      linears, 4 * h, embeddings + pooler)


def shape_from_config(config: dict) -> ModelShape:
    kind = config.get("model_type")
    if kind in LLAMA_LIKE:
        return _llama_like(config)
    if kind == "gpt2":
        return _gpt2(config)
    if kind in ENCODERS:
        return _encoder(config)
    raise ModelError(f"the planner does not know the '{kind}' architecture",
                     f"plan a model of a supported family ({', '.join(SUPPORTED)}), or train with --ignore-plan")


def read_shape(model_dir: str | Path) -> ModelShape:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelError(f"'{path}' is missing", "point model.base at a Hugging Face model folder with config.json")
    return shape_from_config(json.loads(path.read_text(encoding="utf-8")))


# --- activations: the bytes autograd saves for backward, per token and per layer -------------------------------
# Itemized from the tensors that torch.autograd.graph.saved_tensors_hooks sees in one SmolLM2 forward pass
# (docs/plan.md lists them); s is the padded row width, which eager attention's [heads x s x s] scores
# make the quadratic term.

# Projections that read the same tensor: without a dtype cast, autograd saves that tensor once for all of them.
SHARED_INPUT = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in",
                "up_proj": "mlp_in", "query": "attn_in", "key": "attn_in", "value": "attn_in"}


def _input_bytes(linears: list[Linear], dtype_bytes: int, copied: bool) -> int:
    """Saved projection inputs: one copy per projection when each casts its input (autocast, or PEFT's cast to
    the fp32 adapter dtype), else one tensor per distinct input."""
    if copied:
        return dtype_bytes * sum(p.in_features for p in linears)
    distinct = {SHARED_INPUT.get(p.name, p.name): p.in_features for p in linears}
    return dtype_bytes * sum(distinct.values())


# Model types whose norm, MLP and attention the trainer's hand-written passes replace on a CPU
# (train/fused_layers.py lists the classes).
FUSED_LAYER_TYPES = {"llama", "mistral", "qwen2"}


def _attention_bytes(shape: ModelShape, c: int, s: int, eager: bool, fused_layers: bool = False) -> float:
    """q, and k and v repeated to every query head (GQA), are the two matmuls' inputs. Eager attention also keeps
    the fp32 softmax output and, below fp32, its copy in the compute dtype for probs @ v: the s-squared term.
    SDPA's fused kernels (CUDA) keep the output and one fp32 log-sum-exp per head instead.
    fused_layers (train/fused_layers.py): k and v are kept once per key head, and the matmul path keeps only the
    probabilities, in the compute dtype; its SDPA path keeps q, k, v, the output (the CPU kernel writes it in the
    layout o_proj reads, so it is o_proj's saved input, counted there) and the log-sum-exp."""
    attn = shape.heads * shape.head_dim
    if fused_layers:
        kv = 2 * shape.kv_heads * shape.head_dim * c
        return attn * c + kv + (shape.heads * s * c if eager else shape.heads * 4)
    if eager:
        return 3 * attn * c + shape.heads * s * (4 + (c if c != 4 else 0))
    return 3 * attn * c + attn * c + shape.heads * 4


def decoder_saved_per_token(shape: ModelShape, method: str, compute_bytes: int, autocast: bool, lora_r: int,
                            targets: list[str] | None, s: int, eager: bool, fused: bool = False,
                            fused_layers: bool = False) -> float:
    """Bytes one token leaves saved for backward in one decoder layer.

    compute_bytes: the dtype the matmuls run in (bf16: 2, fp32: 4). LoRA on bf16 weights: PEFT casts each
    adapted projection's input to the fp32 adapter dtype and saves that copy; frozen base projections save
    nothing (their weight gradient is never computed). SmolLM2, LoRA on bf16, s=120: 44,184 bytes (itemized in
    docs/plan.md); saved_tensors_hooks on a real 8 x 120 batch counted 47,462 per token and layer, of which
    3,277 were the (then unchunked) LM head's log-softmax: 44,185.
    fused: the trainer's own LoRA layers (train/lora_fast.py) cast the adapter to the compute dtype instead, so
    each distinct input is saved once in that dtype, and A's output in it too.
    fused_layers: the trainer's RMSNorm / SwiGLU / attention passes (train/fused_layers.py, LoRA on a CPU): each
    norm keeps its input in the compute dtype, the MLP only the gate and up outputs; s <= the eager limit takes
    the matmul attention path (eager=True). A grouped LoRA product (LORA_GROUPS, every member adapted) rebuilds
    its input from the norm's kept input in backward, and an adapted down_proj its input from gate and up, so
    neither keeps an input of its own.
    """
    h, i, c = shape.hidden, shape.intermediate, compute_bytes
    # gated MLP: gate output (SiLU input), SiLU output and up output; GPT-2: fc output and gelu output
    mlp = (2 if shape.model_type == "gpt2" or fused_layers else 3) * i * c
    attention = _attention_bytes(shape, c, s, eager, fused_layers)
    if method == "full":
        # Every projection saves its input for its weight gradient; the norms keep their fp32 input, the
        # normalized output (for the norm weight's gradient) and one fp32 scale per token.
        inputs = _input_bytes(list(shape.linears), c, copied=autocast)
        norms = 2 * (4 * h + (4 if autocast else c) * h + 4)
        return norms + inputs + attention + mlp
    chosen = targeted(shape.linears, targets)
    rebuilt = rebuilt_inputs(shape, targets) if fused_layers else set()
    kept = [p for p in chosen if p.name not in rebuilt]
    inputs = _input_bytes(kept, c, copied=False) if fused else _input_bytes(chosen, 4, copied=c != 4)
    lora_mid = (c if fused else 4) * lora_r * len(chosen)  # A's output, saved for B's weight gradient
    norms = 2 * ((c if fused_layers else 4) * h + 4)  # the input (fp32 copy unless fused), the fp32 scale
    return norms + inputs + lora_mid + attention + mlp


# train/loss.py runs the LM head chunk by chunk: logits for at most 2**24 values at a time (341 tokens of
# SmolLM2's 49,152-entry vocabulary), with the gradients computed in the same pass.
HEAD_CHUNK_ELEMENTS = 2**24


def decoder_saved_outside_layers(shape: ModelShape, method: str, residual_bytes: int, tokens: int,
                                 labelled: int, first_norm_input: bool = False) -> float:
    """The final norm (as a layer's norms), and what the chunked LM head (train/loss.py) keeps for backward: the
    gradient of the loss with respect to the labelled hidden states, in the residual stream's dtype (fp32 under
    autocast), and with full fine-tuning the fp32 gradient of the head's weight. With a frozen embedding (LoRA)
    the first layer's first norm reads a tensor that needs no gradient and saves nothing, which the final norm
    makes up for: no norm term. first_norm_input: that norm's input and scale are kept all the same, by the
    grouped q/k/v product that rebuilds its output from them (rebuilt_inputs)."""
    h = shape.hidden
    norm = tokens * (8 * h + 4) if method == "full" else tokens * (residual_bytes * h + 4) if first_norm_input else 0
    head_weight_grad = shape.vocab * h * 4 if method == "full" else 0
    return norm + labelled * h * residual_bytes + head_weight_grad


def head_chunk_bytes(shape: ModelShape, method: str, residual_bytes: int, labelled: int) -> float:
    """The chunked head's transient while every activation is still held: at the end of forward, one chunk of
    fp32 logits (reused in place for the softmax gradient) plus that gradient cast to the hidden dtype; at the
    start of backward with full fine-tuning, the scaled fp32 copy of the head weight's gradient."""
    rows = min(labelled, max(1, HEAD_CHUNK_ELEMENTS // shape.vocab))
    chunk = rows * shape.vocab * (4 + (residual_bytes if residual_bytes != 4 else 0))
    return max(chunk, shape.vocab * shape.hidden * 4 if method == "full" else 0)


def encoder_saved_per_token(shape: ModelShape, method: str, compute_bytes: int, autocast: bool, lora_r: int,
                            targets: list[str] | None, s: int, eager: bool, fused: bool = False) -> float:
    """Bytes one token leaves saved in one BERT/RoBERTa layer. Dropout (p=0.1 while training) keeps a 1-byte
    mask and the dropped tensor at three places: attention probabilities, attention output, FFN output."""
    h, i, c = shape.hidden, shape.intermediate, compute_bytes
    attn = 3 * h * c + (shape.heads * s * (c + 1 + c) if eager else h * c + shape.heads * 4)
    dropouts = 2 * h * (1 + c)
    layer_norms = 2 * (h * c + 8)  # input, mean and rstd per token
    gelu = i * c
    if method == "full":
        inputs = _input_bytes(list(shape.linears), c, copied=autocast)
        return attn + dropouts + layer_norms + gelu + inputs
    chosen = targeted(shape.linears, targets)
    inputs = _input_bytes(chosen, 4, copied=c != 4) + 4 * lora_r * len(chosen)
    return attn + dropouts + layer_norms + gelu + inputs


# --- the optimizer step (CPU) ----------------------------------------------------------------------------------
# glibc serves an allocation of more than 32 MiB (its largest mmap threshold, 4 MiB x sizeof(long) on 64-bit)
# with its own mmap and unmaps it at free; smaller ones come from the heap, which keeps freed memory mapped. So
# the gradient of an embedding matrix (SmolLM2: 108 MiB, MiniLM: 45 MiB) never reuses the heap that the freed
# activations leave behind, while a projection's gradient does.
MMAP_THRESHOLD_MAX = 32 * 2**20


def mmapped_grad_bytes(shape: ModelShape, method: str, lm_head: bool, param_bytes: int = 4) -> int:
    """Gradients big enough for their own mmap (above MMAP_THRESHOLD_MAX), which therefore add to the heap the
    activations left instead of reusing it: full fine-tuning's embedding gradient. A decoder's LM-head weight
    gradient is left out: the chunked head computes it during forward and decoder_saved_outside_layers counts it
    with the activations (with tied embeddings it is also the embedding's gradient)."""
    if method != "full":
        return 0
    embedding = shape.vocab * shape.hidden * param_bytes
    if embedding <= MMAP_THRESHOLD_MAX or (lm_head and shape.tied):
        return 0
    return embedding
