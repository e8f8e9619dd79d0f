"""Export a Llama-shaped stentor model to GGUF (llama.cpp's format) and verify the file.

Layout follows what llama.cpp expects for `general.architecture = llama`:

* tensors `token_embd`, `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
  ffn_gate, ffn_up, ffn_down}`, `output_norm`, and `output` only when lm_head is not tied
  (llama.cpp falls back to `token_embd` when `output` is absent);
* Q and K rows are permuted per head from Hugging Face's rotate-half RoPE layout (first half /
  second half of each head) to llama.cpp's interleaved pairs, as llama.cpp's own
  convert_hf_to_gguf.py does for LLaMA; `unpermute_qk` is the inverse used by the checker;
* 1-D tensors (norms) are always f32; 2-D tensors use the chosen dtype (q8_0 falls back to f16
  for a tensor whose row length is not a multiple of q8_0's block of 32).

Tokenizer: llama.cpp has no TokenMonster tokenizer. We write the token strings, scores and
types under `tokenizer.ggml.model = "llama"` so llama.cpp loads the vocabulary and can turn ids
back into pieces, plus the raw `.vocab` file under `stentor.tokenmonster.vocab` (base64 in a GGUF
string: gguf-py reads a uint8 array element by element, which takes seconds for 200 kB) so the file
is self-contained; text must be tokenized with stentor and fed to llama.cpp as ids (docs/deployment.md).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stentor.errors import StentorError
from stentor.export import GGUF_DTYPES as DTYPES
from stentor.fileio import atomic_file

VOCAB_KEY = "stentor.tokenmonster.vocab"
Q8_BLOCK = 32
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute_qk(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp interleaved rows, per head (llama.cpp's convert permutation)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_qk(weight: np.ndarray, heads: int) -> np.ndarray:
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The model's weights as float32 arrays under llama.cpp's names, Q/K already permuted."""
    config = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tied = bool(config.tie_word_embeddings)
    out = {"token_embd.weight": state["model.embed_tokens.weight"]}
    for i in range(config.num_hidden_layers):
        for hf_name, name in _LAYER_NAMES.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if name == "attn_q":
                weight = permute_qk(weight, config.num_attention_heads)
            elif name == "attn_k":
                weight = permute_qk(weight, config.num_key_value_heads)
            out[f"blk.{i}.{name}.weight"] = weight
    out["output_norm.weight"] = state["model.norm.weight"]
    if not tied:
        out["output.weight"] = state["lm_head.weight"]
    return out


def _tensor_type(array: np.ndarray, dtype: str):
    from gguf import GGMLQuantizationType as Q

    if array.ndim == 1 or dtype == "f32":
        return Q.F32
    if dtype == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        return Q.Q8_0
    return Q.F16


def _vocab_entries(tokenizer, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """Token strings, scores and llama.cpp token types for ids 0..vocab_size-1."""
    from gguf import TokenType

    scores: dict[int, float] = {}
    vocab = getattr(tokenizer, "vocab", None)
    if hasattr(vocab, "tokens"):  # StentorTokenizer: TokenMonster's own scores
        scores = {info.id: float(info.score) for info in vocab.tokens()}
    special = set(tokenizer.all_special_ids)
    tokens, token_scores, types = [], [], []
    for i in range(vocab_size):
        name = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        if name is None:
            tokens.append(f"<unused_{i}>")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(name)
            if name.startswith("<reserved_"):
                types.append(TokenType.UNUSED)
            elif i in special:
                types.append(TokenType.CONTROL)
            else:
                types.append(TokenType.NORMAL)
        token_scores.append(scores.get(i, 0.0))
    return tokens, token_scores, [int(t) for t in types]


def _raw_vocab(tokenizer) -> bytes | None:
    vocab = getattr(tokenizer, "vocab", None)
    return vocab.to_bytes() if hasattr(vocab, "to_bytes") else None


def write_gguf(model, tokenizer, out_path: str | os.PathLike, dtype: str = "f16", name: str = "stentor") -> Path:
    """Write `model` + `tokenizer` as one self-contained GGUF file, atomically."""
    import gguf
    from gguf import LlamaFileType

    if dtype not in DTYPES:
        raise StentorError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise StentorError(f"GGUF export supports Llama models; this one is {getattr(config, 'model_type', '?')}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": config.rope_theta}
    if rope.get("rope_type", "default") != "default":
        raise StentorError(f"GGUF export supports plain RoPE; this model uses {rope['rope_type']!r} scaling")
    tokens, scores, types = _vocab_entries(tokenizer, config.vocab_size)
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    with atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(name)
        writer.add_file_type(file_type[dtype])
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id)):
            if value is not None:
                getattr(writer, f"add_{key}_token_id")(int(value))
        writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", True)))
        writer.add_add_eos_token(bool(getattr(tokenizer, "add_eos_token", False)))
        raw = _raw_vocab(tokenizer)
        if raw is not None:
            writer.add_string(VOCAB_KEY, base64.b64encode(raw).decode("ascii"))
        for tensor_name, array in gguf_tensors(model).items():
            qtype = _tensor_type(array, dtype)
            if qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=np.float32))
            elif qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(tensor_name, array.astype(np.float16))
            else:
                writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)


@dataclass
class GGUFContents:
    """What a GGUF file holds, decoded: metadata values and float32 tensors (dequantized)."""

    metadata: dict
    tensors: dict[str, np.ndarray]
    types: dict[str, str]


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Read a GGUF file back with gguf-py's reader; tensors in numpy's [rows, cols] order."""
    import gguf
    from gguf import GGUFValueType

    try:
        reader = gguf.GGUFReader(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise StentorError(f"cannot read {path} as GGUF: {exc}") from None
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            if field.types[-1] == GGUFValueType.STRING:
                metadata[key] = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                metadata[key] = [field.parts[i].tolist()[0] for i in field.data]
        elif key == VOCAB_KEY:
            metadata[key] = base64.b64decode(field.contents())
        else:
            metadata[key] = field.contents()
    tensors, types = {}, {}
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        tensors[tensor.name] = np.asarray(data, dtype=np.float32).reshape(shape)
        types[tensor.name] = tensor.tensor_type.name
    return GGUFContents(metadata, tensors, types)


def verify_gguf(path: str | os.PathLike, model, tokenizer) -> int:
    """Read `path` back and compare every tensor (within the dtype's rounding) and the key metadata.

    Returns the number of tensors checked; raises StentorError naming the first mismatch.
    """
    contents = read_gguf(path)
    expected = gguf_tensors(model)
    if set(contents.tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(contents.tensors)), sorted(set(contents.tensors) - set(expected))
        raise StentorError(f"{path}: tensor names differ (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, want in expected.items():
        got = contents.tensors[name]
        kind = contents.types[name]
        scale = np.abs(want).max() if want.size else 0.0
        # exact for f32, half-precision rounding for f16, one q8_0 step (block absmax / 127) at most
        tol = {"F32": 0.0, "F16": 1e-3 * scale + 1e-6, "Q8_0": scale / 127 + 1e-6}[kind]
        if got.shape != want.shape or float(np.abs(got - want).max()) > tol:
            raise StentorError(f"{path}: tensor {name} ({kind}) does not match the model; export again")
    config = model.config
    checks = {
        "general.architecture": "llama",
        "llama.block_count": config.num_hidden_layers,
        "llama.embedding_length": config.hidden_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
        "llama.context_length": config.max_position_embeddings,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
    }
    for key, want in checks.items():
        if contents.metadata.get(key) != want:
            raise StentorError(f"{path}: metadata {key} is {contents.metadata.get(key)!r}, expected {want!r}")
    tokens = contents.metadata["tokenizer.ggml.tokens"]
    if len(tokens) != config.vocab_size or tokens[: len(tokenizer)] != tokenizer.convert_ids_to_tokens(
        list(range(min(len(tokenizer), config.vocab_size)))
    ):
        raise StentorError(f"{path}: the token list does not match the tokenizer; export again")
    raw = _raw_vocab(tokenizer)
    if raw is not None and contents.metadata.get(VOCAB_KEY) != raw:
        raise StentorError(f"{path}: the embedded TokenMonster vocabulary differs from the tokenizer's; export again")
    return len(expected)


def export_gguf(
    model_dir: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "f16", tokenizer_path: str | None = None
) -> Path:
    """`stentor export gguf`: load a float model directory and its tokenizer, write and verify the file."""
    from stentor.eval.loading import load_tokenizer
    from stentor.model.loading import load_model
    from stentor.model.quant_format import is_quantized_dir
    from stentor.fileio import ensure_writable_dir

    if dtype not in DTYPES:
        raise StentorError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not str(out_path).endswith(".gguf"):
        raise StentorError(f"-o {out_path}: name the output file *.gguf")
    if is_quantized_dir(model_dir):
        raise StentorError(f"{model_dir} is a `stentor quantize` output; export the float model (use --dtype q8_0)")
    ensure_writable_dir(Path(out_path).parent)
    tokenizer = load_tokenizer(tokenizer_path or os.fspath(model_dir))
    model = load_model(os.fspath(model_dir))
    write_gguf(model, tokenizer, out_path, dtype, name=Path(model_dir).resolve().name)
    verify_gguf(out_path, model, tokenizer)
    return Path(out_path)
