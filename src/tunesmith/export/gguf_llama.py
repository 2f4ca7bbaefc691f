"""A merged Llama-architecture model as one GGUF file (llama.cpp, Ollama, LM Studio), written with the `gguf`
library: llama.* hyperparameters, the tokenizer, and the weights in f32, f16, bf16 or q8_0.

Layout, as llama.cpp's own converter writes it (and transformers' GGUF loader reads it back):
- tensor names from gguf's Llama name map (`model.layers.0.self_attn.q_proj` -> `blk.0.attn_q`);
- q_proj and k_proj rows permuted from Hugging Face's rotary layout (the two halves of each head's dimensions
  apart) to llama.cpp's (the pairs interleaved), see `permute_rotary`;
- one-dimensional tensors (the RMS norms) always in f32, as llama.cpp expects;
- `output.weight` only when the LM head is not tied to the embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import ModelError

# --gguf-type -> (ggml tensor type name, llama.cpp file type name)
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
LOSSY_GGUF_TYPES = ("q8_0",)  # checked against the unrounded model by top-1 agreement, not only by parity
Q8_0_BLOCK = 32  # values per q8_0 block: a row must be a whole number of blocks


def _refuse(detail: str) -> ModelError:
    return ModelError(f"GGUF export supports Llama-architecture decoders; {detail}",
                      "export with --format merged (any architecture) and convert it with llama.cpp's "
                      "convert_hf_to_gguf.py")


def check_supported(config) -> None:
    if config.model_type != "llama":
        raise _refuse(f"this model is '{config.model_type}'")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise _refuse("this one has attention or MLP biases")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise _refuse(f"this one uses '{rope.get('rope_type')}' rope scaling, which is not written yet")


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face q/k rows -> llama.cpp's. Per head, HF puts rotary pair members half a head apart
    (rows i and i + d/2); llama.cpp wants them adjacent (rows 2i and 2i + 1). View each head's rows as
    [2, d/2] and transpose to [d/2, 2]; transformers' loader applies the inverse (`_reverse_permute_weights`)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def tensor_type(name: str, tensor: torch.Tensor, gguf_type: str) -> str:
    """The ggml type one tensor is stored in, by llama.cpp's rules."""
    if tensor.ndim == 1:
        return "F32"
    wanted = GGUF_TYPES[gguf_type][0]
    if wanted == "Q8_0" and tensor.shape[-1] % Q8_0_BLOCK:
        return "F16"  # llama.cpp's fallback for rows that are not whole blocks
    return wanted


def _encode(array: np.ndarray, ggml_type: str) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(array, gguf.GGMLQuantizationType[ggml_type])


def _decode(data: np.ndarray, ggml_type: str) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType[ggml_type])


def gguf_tensors(model) -> list[tuple[str, str, torch.Tensor]]:
    """(HF name, GGUF name, tensor) for every weight, q/k permuted, the tied LM head left out."""
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    out = []
    # named_parameters() yields a tied weight once (under model.embed_tokens): no output.weight then.
    for name, param in model.named_parameters():
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))  # keeps the suffix
        if gguf_name is None:
            raise _refuse(f"it has a weight '{name}' that has no place in a llama GGUF file")
        tensor = param.detach().to(torch.float32)
        if name.endswith("self_attn.q_proj.weight"):
            tensor = permute_rotary(tensor, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            tensor = permute_rotary(tensor, config.num_key_value_heads)
        out.append((name, gguf_name, tensor))
    return out


@torch.no_grad()
def round_like_gguf(model, gguf_type: str) -> None:
    """Give the model, in place, the values the GGUF file will hold: each weight encoded to its ggml type and
    decoded back. The parity reference then differs from the file only by where it computes, not by rounding.
    (The q/k row permutation moves whole rows, and blocks run along rows, so rounding commutes with it.)"""
    for name, param in model.named_parameters():
        ggml_type = tensor_type(name, param, gguf_type)
        if ggml_type != "F32":
            values = _decode(_encode(param.detach().float().numpy(), ggml_type), ggml_type)
            param.copy_(torch.from_numpy(np.ascontiguousarray(values)).reshape(param.shape))


def hyperparameters(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or {}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    meta = {"context_length": config.max_position_embeddings, "embedding_length": config.hidden_size,
            "block_count": config.num_hidden_layers, "feed_forward_length": config.intermediate_size,
            "attention.head_count": config.num_attention_heads,
            "attention.head_count_kv": config.num_key_value_heads,
            "rope.freq_base": float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
            "rope.dimension_count": head_dim,
            "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps), "vocab_size": config.vocab_size}
    if head_dim * config.num_attention_heads != config.hidden_size:
        meta["attention.key_length"] = meta["attention.value_length"] = head_dim
    return meta


def _add(writer, key: str, value) -> None:
    # Integers are uint32 and lists typed by their first element (int32 for token types), as llama.cpp writes.
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)


def write_gguf(model, path: Path, gguf_type: str, name: str, vocab: dict) -> None:
    """Write the merged model (fp32 weights) and the tokenizer metadata `vocab` to `path`."""
    import gguf

    config = model.config
    check_supported(config)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("model")
    writer.add_name(name)
    for key, value in hyperparameters(config).items():
        _add(writer, f"llama.{key}", value)
    writer.add_file_type(int(gguf.LlamaFileType[GGUF_TYPES[gguf_type][1]]))
    if gguf_type in LOSSY_GGUF_TYPES:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in vocab.items():
        _add(writer, key, value)
    for hf_name, gguf_name, tensor in gguf_tensors(model):
        ggml_type = tensor_type(hf_name, tensor, gguf_type)
        array = tensor.numpy()
        if ggml_type == "F32":
            writer.add_tensor(gguf_name, np.ascontiguousarray(array, dtype=np.float32))
        elif ggml_type == "F16":
            writer.add_tensor(gguf_name, array.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, _encode(array, ggml_type), raw_dtype=gguf.GGMLQuantizationType[ggml_type])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_gguf(folder: Path, filename: str):
    """The GGUF read back by transformers' own GGUF loader (dequantized to fp32), with its tokenizer."""
    import contextlib
    import io

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The GGUF reader draws its own tqdm bar, outside transformers' progress-bar switch; ours is already running.
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
    return model, tokenizer
