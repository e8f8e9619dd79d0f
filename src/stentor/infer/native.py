"""The compiled decode runtime (`_kernels.c`) behind `stentor.load`, `generate`, `serve`: no torch needed.

A `NativeEngine` holds NumPy views of the weights (mapped from safetensors, or shared with an
in-memory HF model) and calls C twice per token: one forward step for every row of the batch
(each row has its own KV slot and position, so the server's rows need not line up), then the
sampler. It supports Llama-shaped models (MHA or GQA, SiLU, no biases, default RoPE) with float
weights or `stentor quantize --method int8` weights; anything else raises `Unsupported`, and the
caller falls back to the torch engine with a one-line notice naming the reason.

Sampling is Hugging Face's arithmetic (see `_kernels.c`), drawn from NumPy's PCG64 generator:
greedy output equals HF and the torch engine token for token; seeded sampled output is
reproducible run to run but is a different random stream from torch's (docs/inference.md).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from stentor.errors import StentorError
from stentor.fileio import read_json
from stentor.infer.decoding import LogitAdjust, SamplingParams, Step, chosen_logprobs, fit_prompt, plan_rows
from stentor.model.quant_format import QUANT_METHOD


class Unsupported(StentorError):
    """This model or machine cannot run on the compiled runtime (the message says why)."""


# -- the library ----------------------------------------------------------------------------------


class _Mat(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("type", ctypes.c_int32),
                ("rows", ctypes.c_int32), ("cols", ctypes.c_int32), ("pad_", ctypes.c_int32)]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", ctypes.c_void_p), ("ffn_norm", ctypes.c_void_p)] + [
        (name, _Mat) for name in ("q", "k", "v", "o", "gate", "up", "down")
    ]


class _Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in
                ("n_layers", "hidden", "n_heads", "n_kv", "head_dim", "inter", "vocab", "max_pos")] + [
        ("eps", ctypes.c_float), ("capacity", ctypes.c_int32), ("layers", ctypes.c_void_p),
        ("final_norm", ctypes.c_void_p), ("embed", _Mat), ("lm_head", _Mat),
        ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p), ("kv", ctypes.c_void_p)]


class _Params(ctypes.Structure):
    _fields_ = [("penalty", ctypes.c_float), ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                ("min_p", ctypes.c_float), ("top_k", ctypes.c_int32), ("greedy", ctypes.c_int32)]


_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None


def library() -> ctypes.CDLL:
    """The compiled runtime, loaded once; `Unsupported` when this install has none."""
    global _LIB, _LIB_ERROR
    if _LIB is not None:
        return _LIB
    if _LIB_ERROR is None:
        spec = importlib.util.find_spec("stentor.infer._kernels")
        if spec is None or not spec.origin:
            _LIB_ERROR = "stentor was installed without its compiled runtime (no C compiler at install time)"
        else:
            try:
                lib = ctypes.CDLL(spec.origin)
            except OSError as exc:
                _LIB_ERROR = f"the compiled runtime does not load here ({exc})"
            else:
                p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
                lib.st_set_threads.argtypes, lib.st_set_threads.restype = [i32], i32
                lib.st_scratch_floats.argtypes, lib.st_scratch_floats.restype = [p, i32, i32], i64
                lib.st_forward.argtypes, lib.st_forward.restype = [p, i32, p, p, p, i32, p, p, p, i64], i32
                lib.st_sample.argtypes, lib.st_sample.restype = [i32, i32, p, p, p, p, p, p, p, p], None
                lib.st_probs.argtypes, lib.st_probs.restype = [i32, i32, p, p, p, p, p, p], None
                f32 = ctypes.c_float
                lib.st_threads.argtypes, lib.st_threads.restype = [], i32
                lib.st_add_norm.argtypes, lib.st_add_norm.restype = [i32, i32, i32, p, p, p, f32, p, p, i64], i32
                lib.st_glu.argtypes, lib.st_glu.restype = [i32, i32, i32, p, p, p, i64], i32
                lib.st_tree_attention_floats.argtypes = [i32, i32, i32, i32]
                lib.st_tree_attention_floats.restype = i64
                lib.st_tree_attention.argtypes = [i32, i32, i32, i32, i32, i32, p, p, p, p, p, p, p, p, i64]
                lib.st_tree_attention.restype = i32
                lib.st_logprobs.argtypes, lib.st_logprobs.restype = [i32, i32, i32, p, p, p, p, p, i64], i32
                lib.st_bf16_unit.argtypes, lib.st_bf16_unit.restype = [], i32
                lib.st_use_bf16_unit.argtypes, lib.st_use_bf16_unit.restype = [i32], i32
                lib.st_bf16_pack.argtypes, lib.st_bf16_pack.restype = [p, i32, i32, p], None
                lib.st_f32_tiles_available.argtypes, lib.st_f32_tiles_available.restype = [], i32
                lib.st_f32_pack.argtypes, lib.st_f32_pack.restype = [p, i32, i32, p], None
                lib.st_tree_forward_floats.argtypes = [i32] * 7
                lib.st_tree_forward_floats.restype = i64
                lib.st_tree_forward.argtypes = [i32] * 9 + [f32] + [p] * 9 + [i64]
                lib.st_tree_forward.restype = i32
                lib.st_bf16_logprobs_floats.argtypes, lib.st_bf16_logprobs_floats.restype = [i32], i64
                lib.st_bf16_logprobs.argtypes = [i32, i32, i32, i32, p, p, p, p, p, p, i64]
                lib.st_bf16_logprobs.restype = i32
                _LIB = lib
                return lib
    raise Unsupported(_LIB_ERROR)


def default_threads() -> int:
    """Cores this process may use, at most 8 (a 12M model gains nothing beyond)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _ptr(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


class _Scratch:
    """Float32 scratch for the C calls: grown to what the call needs for the thread pool as it is, and the
    call made again when it reports -2 (another engine resized the pool in between)."""

    def __init__(self) -> None:
        self.array = np.empty(0, np.float32)

    def call(self, floats, fn, *args) -> int:
        """`fn(*args, scratch, size)`, with `floats()` the size it needs now."""
        while True:
            need = floats()
            if self.array.size < need:
                self.array = np.empty(need, np.float32)
            status = fn(*args, self.array.ctypes.data, self.array.size)
            if status != -2:
                return status


_BF16_UNITS = (None, "avx512-bf16", "amx")  # by the C library's codes (BF16_NONE, BF16_DP, BF16_AMX)


class Stages:
    """The runtime's scoring stages (see `_kernels.c`), on buffers passed by address: the torch
    engine's batched scoring path runs its matmuls in torch and everything between them here.

    Buffers are C-contiguous float32, or bfloat16 where `bf16` is set; the caller keeps them alive.
    """

    def __init__(self, threads: int | None = None):
        self.lib = library()
        self.lib.st_set_threads(threads or default_threads())
        self._scratch = _Scratch()

    def _run(self, fn, per_thread: int, *args) -> int:
        return self._scratch.call(lambda: per_thread * self.lib.st_threads(), fn, *args)

    def add_norm(self, n: int, d: int, bf16: bool, x: int, add: int | None, weight: int, eps: float, out: int) -> None:
        """x [n, d] (float32) += add; out = rms_norm(x) * weight."""
        self._run(self.lib.st_add_norm, d, n, d, int(bf16), x, add, weight, eps, out)

    def glu(self, n: int, inner: int, bf16: bool, gate_up: int, out: int) -> None:
        """out [n, inner] = silu(gate_up[:, :inner]) * gate_up[:, inner:]."""
        self._run(self.lib.st_glu, 2 * inner, n, inner, int(bf16), gate_up, out)

    def tree_attention(self, rows: int, width: int, heads: int, kv_heads: int, head_dim: int, bf16: bool, qkv: int,
                       pos: int, seg: int, trunk: int, cos: int, sin: int, out: int) -> None:
        """RoPE + attention of packed trees (int32 pos and seg per token, int32 trunk length per row)."""
        per_thread = self.lib.st_tree_attention_floats(width, heads, kv_heads, head_dim)
        self._run(self.lib.st_tree_attention, per_thread, rows, width, heads, kv_heads, head_dim, int(bf16), qkv, pos,
                  seg, trunk, cos, sin, out)  # fmt: skip

    def logprobs(self, n: int, vocab: int, bf16: bool, logits: int, targets: int, logp: int, greedy: int) -> None:
        """logp (float64) = log_softmax(logits)[target] per row; greedy (uint8) = the target is the argmax."""
        if self._run(self.lib.st_logprobs, vocab, n, vocab, int(bf16), logits, targets, logp, greedy):
            raise StentorError(f"a target token id is outside the vocabulary of {vocab}")

    @property
    def bf16_unit(self) -> str | None:
        """What runs the bf16 matmuls of `tree_forward` and `bf16_logprobs` here: "amx" (AMX-BF16 tiles),
        "avx512-bf16" (vdpbf16ps on the same packed weights, where AMX is missing) or None."""
        return _BF16_UNITS[self.lib.st_bf16_unit()]

    def use_bf16_unit(self, unit: str | None) -> str | None:
        """Run later bf16 calls on `unit` ("amx", "avx512-bf16" or None: off) where this CPU has it, for the
        whole process; returns the unit now in use."""
        return _BF16_UNITS[self.lib.st_use_bf16_unit(_BF16_UNITS.index(unit))]

    @property
    def f32_tiles(self) -> bool:
        """Whether this CPU runs the float32 tile matmul (AVX-512F + FMA) of `tree_forward(f32=True)`."""
        return bool(self.lib.st_f32_tiles_available())

    def bf16_pack(self, weight: int, rows: int, cols: int, out: int) -> None:
        """A bf16 [rows, cols] matrix (input-major) into `out` (rows * cols bf16) in AMX tile order (pairs of
        rows interleaved, 16 columns per block: what both bf16 units read)."""
        self.lib.st_bf16_pack(weight, rows, cols, out)

    def f32_pack(self, weight: int, rows: int, cols: int, out: int) -> None:
        """A float32 [rows, cols] matrix (input-major) into `out` (rows * cols floats) in panels of 32 columns."""
        self.lib.st_f32_pack(weight, rows, cols, out)

    def bf16_logprobs(self, n: int, hidden: int, vocab: int, products: int, h: int, head: int, targets: int,
                      logp: int, greedy: int) -> bool:  # fmt: skip
        """`logprobs` from float32 hidden states h [n, hidden] and an LM head packed by `bf16_pack` (see
        `Engine.bf16_head`: products 3 for the split head, 1 for plain bf16), never storing the logits whole.
        False where it cannot run (nothing written)."""
        per_thread = self.lib.st_bf16_logprobs_floats(hidden)
        return self._run(self.lib.st_bf16_logprobs, per_thread, n, hidden, vocab, products, h, head, targets, logp,
                         greedy) == 0  # fmt: skip

    def tree_forward(self, rows: int, width: int, sizes: tuple[int, int, int, int, int, int], f32: bool, eps: float,
                     weights: int, final_norm: int, cos: int, sin: int, pos: int, seg: int, trunk: int,
                     x: int) -> bool:  # fmt: skip
        """The whole layer stack of packed trees in one call: x [rows * width, hidden] float32 embeddings
        in, final normed hidden states out. sizes: hidden, inner, heads, kv heads, head dim, layers;
        weights: 6 pointers per layer (norm1, packed qkv, packed o, norm2, packed gate_up, packed down),
        packed by `f32_pack` (f32: float32 matmuls on AVX-512) or `bf16_pack` (bf16 on AMX or AVX512-BF16).
        False when that matmul or these sizes cannot run it (nothing was written)."""
        hidden, inner, heads, kv, head_dim, layers = sizes
        per_thread = self.lib.st_tree_forward_floats(width, hidden, inner, heads, kv, head_dim, int(f32))
        return self._run(self.lib.st_tree_forward, per_thread, rows, width, *sizes, int(f32), eps, weights, final_norm,
                         cos, sin, pos, seg, trunk, x) == 0  # fmt: skip


# -- weights --------------------------------------------------------------------------------------


MAX_SIZE = 1 << 20  # no dimension, layer count or context of a model this runtime serves comes near it


def check_config(config: dict) -> None:
    """`Unsupported` unless the runtime computes exactly what HF computes for this config; a
    StentorError for a config whose sizes are missing or absurd (a damaged config.json)."""
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vocab_size",
                "num_key_value_heads", "head_dim", "max_position_embeddings"):  # fmt: skip
        value = config.get(key)
        required = key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vocab_size")
        if (value is not None or required) and not (
            isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SIZE
        ):
            raise StentorError(f"config.json: {key!r} must be a positive integer up to {MAX_SIZE}, got {value!r}; "
                               "the file is damaged or not a Llama config")  # fmt: skip
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise StentorError(f"config.json: 'rms_norm_eps' must be a small positive number, got {eps!r}")
    kind = config.get("model_type")
    if kind not in ("llama", "mistral"):
        raise Unsupported(f"the compiled runtime runs Llama-shaped models, not {kind!r}")
    if config.get("hidden_act", "silu") != "silu":
        raise Unsupported(f"activation {config.get('hidden_act')!r} (the compiled runtime has SiLU)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise Unsupported("the model's layers have biases")
    if config.get("sliding_window"):
        raise Unsupported("sliding-window attention")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise Unsupported(f"RoPE type {rope.get('rope_type', rope.get('type'))!r} (the runtime has default RoPE)")
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if heads % kv or head_dim % 2:
        raise Unsupported(f"{heads} heads over {kv} KV heads of width {head_dim}")
    quant = config.get("quantization_config")
    if quant and (quant.get("quant_method") != QUANT_METHOD or quant.get("method") != "int8"):
        raise Unsupported(f"quantization {quant.get('method', quant.get('quant_method'))!r} (the runtime runs int8)")


def _float32(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "BF16":  # bfloat16 is the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)


class Weights:
    """NumPy arrays in the runtime's terms: float32 matrices, or int8 rows with float32 scales."""

    def __init__(self, config: dict, tensors: dict[str, np.ndarray], kinds: dict[str, str] | None = None,
                 generation: dict | None = None):
        check_config(config)
        self.config = config
        self.generation = generation or {}  # generation_config.json: where the EOS ids may be
        kinds = kinds or {}
        self._keep: list[np.ndarray] = []
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or self.hidden // self.heads
        self.inter = config["intermediate_size"]
        self.layers = config["num_hidden_layers"]
        self.vocab = config["vocab_size"]
        self.max_positions = config.get("max_position_embeddings", 2048)
        self.eps = float(config.get("rms_norm_eps", 1e-6))

        def vector(name: str, size: int) -> np.ndarray:
            if name not in tensors:
                raise StentorError(f"the weights lack {name}; the model directory is incomplete")
            array = _float32(tensors[name], kinds.get(name, "F32"))
            if array.shape != (size,):
                raise StentorError(f"{name} has shape {array.shape}, expected ({size},)")
            return self._hold(array)

        def matrix(prefix: str, rows: int, cols: int) -> _Mat:
            if prefix + ".qweight" in tensors:
                q, scale = tensors[prefix + ".qweight"], tensors.get(prefix + ".scales")
                if q.dtype != np.int8 or scale is None or q.shape != (rows, cols) or scale.shape != (rows,):
                    raise StentorError(f"{prefix} is not an int8 [{rows}, {cols}] matrix with {rows} scales")
                return _Mat(_ptr(self._hold(np.ascontiguousarray(q))),
                            _ptr(self._hold(np.ascontiguousarray(scale, dtype=np.float32))), 1, rows, cols, 0)
            if prefix + ".weight" not in tensors:
                raise StentorError(f"the weights lack {prefix}.weight; the model directory is incomplete")
            w = _float32(tensors[prefix + ".weight"], kinds.get(prefix + ".weight", "F32"))
            if w.shape != (rows, cols):
                raise StentorError(f"{prefix}.weight has shape {w.shape}, expected ({rows}, {cols})")
            return _Mat(_ptr(self._hold(w)), None, 0, rows, cols, 0)

        H, qd, kvd = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        layers = (_Layer * self.layers)()
        for i in range(self.layers):
            pre = f"model.layers.{i}."
            layers[i] = _Layer(
                _ptr(vector(pre + "input_layernorm.weight", H)), _ptr(vector(pre + "post_attention_layernorm.weight", H)),
                matrix(pre + "self_attn.q_proj", qd, H), matrix(pre + "self_attn.k_proj", kvd, H),
                matrix(pre + "self_attn.v_proj", kvd, H), matrix(pre + "self_attn.o_proj", H, qd),
                matrix(pre + "mlp.gate_proj", self.inter, H), matrix(pre + "mlp.up_proj", self.inter, H),
                matrix(pre + "mlp.down_proj", H, self.inter),
            )
        self.layer_table = layers
        has_head = "lm_head.weight" in tensors or "lm_head.qweight" in tensors
        has_embed = "model.embed_tokens.weight" in tensors or "model.embed_tokens.qweight" in tensors
        head = "lm_head" if has_head else "model.embed_tokens"
        embed = "model.embed_tokens" if has_embed else "lm_head"
        self.lm_head = matrix(head, self.vocab, H)
        self.embed = matrix(embed, self.vocab, H)
        self.final_norm = vector("model.norm.weight", H)
        theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
        self.cos, self.sin = self._rope(float(theta))

    def _hold(self, array: np.ndarray) -> np.ndarray:
        self._keep.append(array)
        return array

    def _rope(self, theta: float) -> tuple[np.ndarray, np.ndarray]:
        """HF's default RoPE tables in float32: inv_freq = theta^(-2i/d), angle = position * inv_freq."""
        d = self.head_dim
        inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))).astype(np.float32)
        angles = np.arange(self.max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
        return self._hold(np.cos(angles).astype(np.float32)), self._hold(np.sin(angles).astype(np.float32))

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> Weights:
        """Map a model directory's safetensors (float or `stentor quantize` int8) without copying float32."""
        from stentor.model.tensors import map_model_tensors

        model_dir = Path(model_dir)
        config = read_json(model_dir / "config.json")
        check_config(config)
        tensors, kinds = map_model_tensors(model_dir)
        generation = model_dir / "generation_config.json"  # optional; when present its EOS ids count
        generation = read_json(generation) if generation.exists() else {}
        try:
            return cls(config, tensors, kinds, generation)
        except Unsupported:
            raise
        except StentorError as exc:  # the weights and config.json disagree: name the files
            raise StentorError(f"{model_dir / 'model.safetensors'} does not match config.json: {exc}") from None

    @classmethod
    def from_model(cls, model) -> Weights:
        """Share an in-memory HF `LlamaForCausalLM`'s float32 weights (or its stentor int8 modules)."""
        config = model.config.to_dict()
        quant = getattr(model, "stentor_quantization", None)
        if quant is not None:
            config["quantization_config"] = quant.to_dict()
        tensors = {}
        for name, tensor in model.state_dict().items():
            tensor = tensor.detach()
            if tensor.is_floating_point():
                tensor = tensor.float()
            tensors[name] = tensor.contiguous().numpy()
        if quant is not None:  # the float table is the dequantized int8 rows; lm_head's own int8 is the source
            tensors.pop("model.embed_tokens.weight", None)
        generation = getattr(model, "generation_config", None)
        return cls(config, tensors, generation=generation.to_dict() if generation is not None else None)


# -- the engine -----------------------------------------------------------------------------------


class NativeEngine:
    """Prefill + decode on the compiled runtime; the same `generate` contract as the torch `Engine`.

    Not thread-safe (the server gives it one scheduler thread); the thread pool is process-wide.
    """

    def __init__(self, weights: Weights, threads: int | None = None):
        self.lib = library()
        self.weights = weights
        self.threads = self.lib.st_set_threads(threads or default_threads())
        self.vocab_size = weights.vocab
        self.max_positions = weights.max_positions
        w = weights
        self._model = _Model(w.layers, w.hidden, w.heads, w.kv_heads, w.head_dim, w.inter, w.vocab, w.max_positions,
                             w.eps, 0, ctypes.addressof(w.layer_table), _ptr(w.final_norm), w.embed, w.lm_head,
                             _ptr(w.cos), _ptr(w.sin), None)
        self._kv = np.empty(0, dtype=np.float32)
        self._scratch = _Scratch()
        self._work = np.empty(4 * w.vocab, dtype=np.float32)

    def _ensure_cache(self, slots: int, capacity: int) -> None:
        # A slot's stride is the cache's capacity, so the size check uses the capacity the cache will have.
        w = self.weights
        capacity = max(capacity, self._model.capacity)
        needed = slots * w.layers * 2 * w.kv_heads * capacity * w.head_dim
        if self._model.capacity < capacity or self._kv.size < needed:
            self._kv = np.empty(needed, dtype=np.float32)
            self._model.kv, self._model.capacity = _ptr(self._kv), capacity

    def forward(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, out_rows: np.ndarray) -> np.ndarray:
        """Run one token per row (KV slot, position each); logits [len(out_rows), V] of the chosen rows."""
        tokens, slots, positions, out_rows = (np.ascontiguousarray(a, dtype=np.int32) for a in (tokens, slots, positions, out_rows))
        logits = np.empty((len(out_rows), self.vocab_size), dtype=np.float32)
        self._forward(len(tokens), _ptr(tokens), _ptr(slots), _ptr(positions), len(out_rows), _ptr(out_rows),
                      _ptr(logits))
        return logits

    def _forward(self, n: int, tokens: int, slots: int, positions: int, n_out: int, out_rows: int, logits: int) -> None:
        """st_forward on array addresses, with a scratch sized for the current thread count (which another
        engine may change: the call then reports -2 and is made again)."""
        model = ctypes.byref(self._model)
        status = self._scratch.call(lambda: self.lib.st_scratch_floats(model, n, n_out), self.lib.st_forward, model, n,
                                    tokens, slots, positions, n_out, out_rows, logits)  # fmt: skip
        if status:
            raise StentorError(f"a token id outside [0, {self.vocab_size}) or a position outside the context")

    def logits(self, sequences: list[list[int]] | np.ndarray) -> np.ndarray:
        """Logits [B, T, V] of every position of equal-length sequences (what HF's forward returns)."""
        ids = np.asarray(sequences, dtype=np.int64)
        batch, steps = ids.shape
        if steps > self.max_positions:
            raise StentorError(f"sequence of {steps} tokens exceeds the model's context of {self.max_positions}")
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= self.vocab_size:
            raise StentorError(f"token ids must be in [0, {self.vocab_size})")
        self._ensure_cache(batch, steps)
        rows = np.arange(batch * steps)
        out = self.forward(ids.reshape(-1), rows // steps, rows % steps, rows)
        return out.reshape(batch, steps, -1)

    def sample(self, logits: np.ndarray, params: list[SamplingParams], seen: np.ndarray, u: np.ndarray,
               banned: np.ndarray | None = None) -> np.ndarray:
        """The sampler alone: next tokens for logits [n, V] with `seen` [n, V] (updated), u [n] uniform draws."""
        logits = np.array(logits, dtype=np.float32, order="C")
        if seen.dtype != np.uint8 or not seen.flags.c_contiguous or seen.shape != logits.shape:
            raise StentorError("seen must be a C-contiguous uint8 array shaped like the logits")
        if banned is not None:
            banned = np.ascontiguousarray(banned, dtype=np.uint8)
        rows, chosen = np.arange(len(logits), dtype=np.int32), np.empty(len(logits), dtype=np.int32)
        table = _param_table(params)
        self.lib.st_sample(len(logits), self.vocab_size, _ptr(logits), _ptr(rows), _ptr(seen), _ptr(banned),
                           ctypes.addressof(table), _ptr(np.ascontiguousarray(u, dtype=np.float64)), _ptr(chosen),
                           _ptr(self._work))
        return chosen

    def distributions(self, logits: np.ndarray, params: SamplingParams, seen: np.ndarray) -> np.ndarray:
        """The processed next-token distribution (what `sample` draws from) of each row of logits [n, V],
        each row penalized with its own row of `seen` [n, V] uint8."""
        logits = np.array(logits, dtype=np.float32, order="C")
        seen = np.ascontiguousarray(seen, dtype=np.uint8)
        if seen.shape != logits.shape:
            raise StentorError("seen must be shaped like the logits")
        probs = np.empty_like(logits)
        rows = np.arange(len(logits), dtype=np.int32)
        table = _param_table([params] * len(logits))
        self.lib.st_probs(len(logits), self.vocab_size, _ptr(logits), _ptr(rows), _ptr(seen), ctypes.addressof(table),
                          _ptr(probs), _ptr(self._work))
        return probs

    def fit_prompt(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        return fit_prompt(prompt, max_new_tokens, self.max_positions)

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        eos_ids: set[int] | frozenset[int] = frozenset(),
        pad_id: int = 0,
        guard=None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[Step]:
        """Decode every prompt (one row each) and yield a `Step` per new token position (see `Engine.generate`).

        Finished rows leave the batch: later steps report `pad_id` for them.
        """
        rows, budget = plan_rows(prompts, params, self.max_positions)
        batch, V = len(prompts), self.vocab_size
        if any(not 0 <= t < V for p in prompts for t in p):
            raise StentorError(f"prompt token ids must be in [0, {V})")
        self._ensure_cache(batch, max(len(p) + b for p, b in zip(prompts, budget)))
        lengths = np.array([len(p) for p in prompts])
        flat = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts])
        slots = np.repeat(np.arange(batch, dtype=np.int32), lengths)
        positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        logits = self.forward(flat, slots, positions, np.cumsum(lengths) - 1)

        table = _param_table(rows)
        seen = np.zeros((batch, V), dtype=np.uint8)
        for i, prompt in enumerate(prompts):
            seen[i, prompt] = 1
        guarded = np.array([p.suppress_replacement_tokens for p in rows])
        states = guard.start(prompts) if guard is not None and guarded.any() else None
        draw = _uniforms(rows)
        # Per-call arrays, passed to C by address: each `.ctypes.data` costs about a microsecond and a
        # step would make ~20 of them. `active` holds the slots of the unfinished rows, compacted.
        active, tokens, positions = np.arange(batch, dtype=np.int32), np.empty(batch, np.int32), np.empty(batch, np.int32)
        out_rows, chosen, uniform = np.arange(batch, dtype=np.int32), np.empty(batch, np.int32), np.empty(batch)
        lib = self.lib
        p_active, p_tokens, p_positions, p_rows, p_chosen, p_uniform, p_logits, p_seen, p_work = (
            a.ctypes.data for a in (active, tokens, positions, out_rows, chosen, uniform, logits, seen, self._work))
        count = [0] * batch
        finished = [False] * batch
        wants_logprobs = any(p.logprobs is not None for p in rows)
        adjust = LogitAdjust.of(rows, V)
        n = batch
        while True:
            banned, p_banned = None, None
            if states is not None:
                last = np.array(count) + 1 >= np.array(budget)
                banned = np.ascontiguousarray((guard.mask(states, last) & guarded[:, None]).astype(np.uint8))
                p_banned = banned.ctypes.data
            params_now = table if n == batch else (_Params * n)(*[table[i] for i in active[:n].tolist()])
            uniform[:n] = draw(active[:n])
            raw = logits[:n].copy() if wants_logprobs else None  # st_sample rewrites the logits in place
            if adjust is not None:
                logits[:n] += adjust.offsets(active[:n])
            lib.st_sample(n, V, p_logits, p_active, p_seen, p_banned, ctypes.addressof(params_now), p_uniform,
                          p_chosen, p_work)
            if adjust is not None:
                adjust.observe(active[:n], chosen[:n])
            slots, picked = active[:n].tolist(), chosen[:n].tolist()
            logprobs = None
            # None once every row that asked for logprobs has finished
            found = chosen_logprobs(raw, picked, [rows[i] for i in slots]) if raw is not None else None
            if found is not None:
                logprobs = [None] * batch
                for i, lp in zip(slots, found):
                    logprobs[i] = lp
            if states is not None:
                states[active[:n]] = guard.advance(states[active[:n]], chosen[:n])
            step = [pad_id] * batch
            for i, token in zip(slots, picked):
                step[i] = token
                count[i] += 1
                if (rows[i].stop_at_eos and token in eos_ids) or count[i] >= budget[i] or (cancelled and cancelled(i)):
                    finished[i] = True
            yield Step(step, list(finished), logprobs)
            if all(finished):
                return
            keep = [k for k, i in enumerate(slots) if not finished[i]]
            if len(keep) < n:
                active[: len(keep)], chosen[: len(keep)] = active[keep], chosen[keep]
                n = len(keep)
            tokens[:n] = chosen[:n]
            positions[:n] = [lengths[i] + count[i] - 1 for i in active[:n].tolist()]
            self._forward(n, p_tokens, p_active, p_positions, n, p_rows, p_logits)


def _param_table(rows: list[SamplingParams]):
    """The sampler's per-row settings; greedy rows take the arg-max after the repetition penalty."""
    return (_Params * len(rows))(*[
        _Params(p.repetition_penalty, p.temperature if p.do_sample else 1.0, p.top_p if p.do_sample else 1.0,
                (p.min_p or 0.0) if p.do_sample else 0.0, p.top_k if p.do_sample else 0, int(not p.do_sample))
        for p in rows])


def _uniforms(rows: list[SamplingParams]):
    """A function giving one uniform draw per active row: one stream per distinct seed, as the torch engine.

    With one seed (or none) for the whole batch, one generator draws for every active row in
    order, so `num_samples` rows with one seed still differ from each other.
    """
    seeds = [p.seed for p in rows]
    if len(set(seeds)) == 1:
        shared = np.random.Generator(np.random.PCG64(seeds[0]))
        return lambda active: shared.random(len(active))
    streams = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
    return lambda active: np.array([streams[i].random() for i in active.tolist()])
