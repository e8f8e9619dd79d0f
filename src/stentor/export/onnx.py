"""Export a Llama-shaped model to ONNX with an explicit KV cache, and check it with onnxruntime.

Graph interface (the layout onnxruntime-genai and Optimum use for decoder-only models):

    inputs   input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64,
             position_ids [batch, seq] int64, past_key_values.N.key / .value [batch, kv_heads, past, head_dim]
    outputs  logits [batch, seq, vocab], present.N.key / .value [batch, kv_heads, past + seq, head_dim]

The first step passes past tensors with past = 0. torch 2.13's default (dynamo) exporter needs
`onnxscript`, which we do not depend on, so we use the TorchScript exporter (`dynamo=False`) on a
small wrapper that runs the HF model's own modules with the cache as plain tensors: HF's Cache
objects do not trace, plain tensors do.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stentor.errors import StentorError
from stentor.fileio import atomic_dir

MODEL_FILE = "model.onnx"
LOGITS_TOLERANCE = 1e-4
CHECK_TOKENS = 16
_SKIP = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}


class CachedLlama(nn.Module):
    """`LlamaForCausalLM` forward with past keys/values as tensor arguments and presents as outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        # rotate_half(x) as x @ rotation: one MatMul where slicing costs a Shape/Slice/Neg/Concat chain per tensor
        half = self.head_dim // 2
        rotation = torch.zeros(self.head_dim, self.head_dim)
        rotation[torch.arange(half) + half, torch.arange(half)] = -1.0
        rotation[torch.arange(half), torch.arange(half) + half] = 1.0
        self.register_buffer("rotation", rotation, persistent=False)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        inner = self.model.model
        batch, steps = input_ids.shape
        x = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(x, position_ids)
        past_len = past[0].shape[2]
        # Query i (absolute column past_len + i) sees key j when j <= past_len + i and j is not padding.
        keys_at = torch.arange(past_len + steps, device=x.device)
        queries_at = torch.arange(steps, device=x.device) + past_len
        visible = (keys_at[None, :] <= queries_at[:, None])[None, None] & attention_mask[:, None, None, :].bool()
        bias = torch.zeros(visible.shape, dtype=x.dtype).masked_fill(~visible, torch.finfo(x.dtype).min)
        presents = []
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(batch, steps, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos[:, None] + (q @ self.rotation) * sin[:, None]
            k = k * cos[:, None] + (k @ self.rotation) * sin[:, None]
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            groups = self.heads // self.kv_heads
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            # the scale given, not derived from q's shape at run time (a Shape/Sqrt/Div chain per layer)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim**-0.5)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return (self.model.lm_head(inner.norm(x)), *presents)


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _empty_past(wrapper: CachedLlama, batch: int, length: int, layers: int) -> list[torch.Tensor]:
    shape = (batch, wrapper.kv_heads, length, wrapper.head_dim)
    return [torch.zeros(shape) for _ in range(2 * layers)]


def write_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 17) -> None:
    """Trace `model` through `CachedLlama` into one ONNX file with dynamic batch/sequence/past axes."""
    layers = model.config.num_hidden_layers
    wrapper = CachedLlama(model.eval())
    inputs, outputs = io_names(layers)
    batch, steps, past_len = 2, 3, 4
    example = (
        torch.ones(batch, steps, dtype=torch.long),
        torch.ones(batch, past_len + steps, dtype=torch.long),
        torch.arange(past_len, past_len + steps).repeat(batch, 1),
        *_empty_past(wrapper, batch, past_len, layers),
    )
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}}
    axes["position_ids"] = {0: "batch", 1: "seq"}
    axes["logits"] = {0: "batch", 1: "seq"}
    axes.update({name: {0: "batch", 2: "past"} for name in inputs[3:]})
    axes.update({name: {0: "batch", 2: "total"} for name in outputs[1:]})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is our deliberate choice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: axes stay dynamic
        torch.onnx.export(
            wrapper, example, os.fspath(path), input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True,
        )


class OnnxDecoder:
    """Greedy decoding and logits on onnxruntime with the graph's KV cache (the check, and a usage example)."""

    def __init__(self, path: str | os.PathLike, num_layers: int, kv_heads: int, head_dim: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        self.inputs, self.outputs = io_names(num_layers)
        self.kv_heads, self.head_dim = kv_heads, head_dim

    def step(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        past_len = past[0].shape[2]
        positions = np.arange(past_len, past_len + ids.shape[1], dtype=np.int64)[None].repeat(ids.shape[0], 0)
        feed = dict(zip(self.inputs, [ids, mask, positions, *past]))
        logits, *present = self.session.run(self.outputs, feed)
        return logits, present

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        ids = np.array([prompt], dtype=np.int64)
        past = [np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for _ in self.inputs[3:]]
        out = []
        for _ in range(max_new_tokens):
            mask = np.ones((1, past[0].shape[2] + ids.shape[1]), dtype=np.int64)
            logits, past = self.step(ids, mask, past)
            token = int(logits[0, -1].argmax())
            out.append(token)
            ids = np.array([[token]], dtype=np.int64)
        return out


@dataclass
class OnnxReport:
    path: Path
    max_abs_diff: float
    greedy_tokens: int


@torch.no_grad()
def _torch_greedy(model: nn.Module, prompt: list[int], tokens: int) -> list[int]:
    """Arg-max decoding by full recomputation: no cache and no EOS stop, the plainest reference."""
    ids = list(prompt)
    for _ in range(tokens):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def verify_onnx(path: str | os.PathLike, model: nn.Module, tokens: int = CHECK_TOKENS) -> OnnxReport:
    """Compare onnxruntime with torch: prefill + cached-step logits, and a greedy decode loop."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    decoder = OnnxDecoder(path, config.num_hidden_layers, config.num_key_value_heads, head_dim)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (2, 7), generator=generator)
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0  # a left-padded row
    with torch.no_grad():
        want = model(prompt, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        full = torch.cat([prompt, prompt[:, :2]], dim=1)
        full_mask = torch.cat([mask, torch.ones(2, 2, dtype=torch.long)], dim=1)
        want_next = model(full, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    empty = [np.zeros((2, config.num_key_value_heads, 0, head_dim), np.float32) for _ in decoder.inputs[3:]]
    feed = dict(zip(decoder.inputs, [prompt.numpy(), mask.numpy(), (mask.cumsum(-1) - 1).clamp(min=0).numpy(), *empty]))
    logits, *present = decoder.session.run(decoder.outputs, feed)
    valid = mask.bool().numpy()
    diff = float(np.abs(logits - want.numpy())[valid].max())
    step_positions = (full_mask.cumsum(-1) - 1)[:, -2:].numpy()
    step_feed = dict(zip(decoder.inputs, [full[:, -2:].numpy(), full_mask.numpy(), step_positions, *present]))
    step_logits = decoder.session.run(["logits"], step_feed)[0]
    diff = max(diff, float(np.abs(step_logits - want_next[:, -2:].numpy()).max()))
    if diff > LOGITS_TOLERANCE:
        raise StentorError(f"{path}: onnxruntime logits differ from torch by {diff:.2e} (> {LOGITS_TOLERANCE}); please report")
    start = prompt[0].tolist()
    torch_tokens = _torch_greedy(model, start, tokens)
    onnx_tokens = decoder.greedy(start, tokens)
    if onnx_tokens != torch_tokens:
        raise StentorError(f"{path}: greedy decoding on onnxruntime diverged from torch ({onnx_tokens} vs {torch_tokens})")
    return OnnxReport(Path(path), diff, tokens)


def load_exportable(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> nn.Module:
    """The float Llama model of `model_dir`, or one line on why it cannot be exported to `out_dir`."""
    from stentor.model.loading import load_model
    from stentor.model.quant_format import is_quantized_dir
    from stentor.fileio import ensure_writable_dir

    if is_quantized_dir(model_dir):
        raise StentorError(f"{model_dir} is a `stentor quantize` output; export the float model to ONNX")
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise StentorError("the output directory is the input model directory; pass a new -o path")
    ensure_writable_dir(Path(out_dir).parent)
    model = load_model(os.fspath(model_dir))
    if getattr(model.config, "model_type", None) != "llama":
        raise StentorError(f"ONNX export supports Llama models; this one is {model.config.model_type}")
    return model


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, opset: int = 17) -> OnnxReport:
    """`stentor export onnx`: write OUT/model.onnx beside the config and tokenizer files, verified."""
    if not 14 <= opset <= 20:
        raise StentorError(f"--opset {opset} is not supported; use 14..20 (scaled_dot_product_attention needs >= 14)")
    model = load_exportable(model_dir, out_dir)
    with atomic_dir(out_dir) as tmp:
        write_onnx(model, tmp / MODEL_FILE, opset)
        report = verify_onnx(tmp / MODEL_FILE, model)
        for item in Path(model_dir).iterdir():
            if item.is_file() and item.name not in _SKIP:
                shutil.copy2(item, tmp / item.name)
    return OnnxReport(Path(out_dir) / MODEL_FILE, report.max_abs_diff, report.greedy_tokens)
