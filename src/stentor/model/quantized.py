"""The `stentor quantize` format's layers, on torch's own int8/int4 CPU kernels (no torchao), and loading
a quantized directory as an HF model. (`quant_format.py` is the torch-free part: methods and config.)

Three methods, each a small `nn.Module` that replaces an `nn.Linear`:

* ``int8``         weight-only, symmetric per output channel; `torch._weight_int8pack_mm`.
* ``int8-dynamic`` int8 weights as above, activations quantized per token at run time
                   (symmetric, absmax); `torch._int_mm` (int8 x int8 -> int32).
* ``int4``         weight-only, asymmetric, groups of `group_size` input columns;
                   `torch._weight_int4pack_mm_for_cpu` with the weight packed at load time.

The weight-only kernels are fast on CPU only for bfloat16 activations (their float32 path is
a slow reference loop), so those modules run the matmul in bfloat16 and return float32.

Embedding and lm_head: Stentor ties them. The tied matrix is stored once, as int8 with one
scale per row (per token), for every method: lm_head runs it through the method's int8
kernel (int4 keeps the output layer at int8, as llama.cpp's q4 files keep `output` at higher
precision), and the embedding table is dequantized to float32 at load time. RMSNorm weights
stay float32. The directory is `config.json` (with a `quantization_config`),
`model.safetensors` (int8/uint8 tensors + float32 scales) and the source's other files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from stentor.errors import StentorError
from stentor.fileio import read_json
from stentor.model.quant_format import GROUP_SIZES, QuantConfig, is_quantized_dir


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: weight ~= qweight * scales[:, None]."""
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
    qweight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return qweight, scales.float()


class Int8Linear(nn.Module):
    """Weight-only int8 Linear (no bias): bf16 activations x int8 weights, per-channel scales."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> Int8Linear:
        module = cls(weight.shape[1], weight.shape[0])
        module.qweight, module.scales = int8_rows(weight.detach().float())
        return module

    @classmethod
    def cat(cls, modules: list[Int8Linear]) -> Int8Linear:
        """One module whose outputs are the given modules' outputs side by side (fused projections)."""
        module = cls(modules[0].in_features, sum(m.out_features for m in modules))
        module.qweight = torch.cat([m.qweight for m in modules])
        module.scales = torch.cat([m.scales for m in modules])
        return module

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.qweight, self.scales.to(torch.bfloat16))
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int8DynamicLinear(Int8Linear):
    """int8 weights and per-token int8 activations: an integer matmul, rescaled in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        x_scales = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        x_int8 = torch.round(flat / x_scales).to(torch.int8)
        out = torch._int_mm(x_int8, self.qweight.t()).float() * (x_scales * self.scales)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """Weight-only 4-bit Linear: per group w ~= (q - 8) * scale + zero, q in 0..15 (the CPU kernel's form).

    On disk the nibbles are in a portable layout (`qweight` uint8 [out, in / 2], low nibble =
    even column); the kernel's own packed layout is built from it at load time.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int):
        super().__init__()
        check_shape("int4", in_features, out_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.zeros(out_features, groups))
        self.register_buffer("packed", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("scales_and_zeros", torch.empty(0), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.pack())

    @classmethod
    def from_weight(cls, weight: torch.Tensor, group_size: int) -> Int4Linear:
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, group_size)
        groups = weight.detach().float().reshape(out_features, -1, group_size)
        low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scales = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((groups - low) / scales).clamp(0, 15).to(torch.uint8).reshape(out_features, in_features)
        module.qweight = q[:, 0::2] | (q[:, 1::2] << 4)
        module.scales = scales.squeeze(-1)
        module.zeros = (low + 8 * scales).squeeze(-1)  # the value that q = 8 stands for
        module.pack()
        return module

    @classmethod
    def cat(cls, modules: list[Int4Linear]) -> Int4Linear:
        """One module whose outputs are the given modules' outputs side by side (fused projections)."""
        first = modules[0]
        module = cls(first.in_features, sum(m.out_features for m in modules), first.group_size)
        for name in ("qweight", "scales", "zeros"):
            setattr(module, name, torch.cat([getattr(m, name) for m in modules]))
        module.pack()
        return module

    def unpacked(self) -> torch.Tensor:
        """The 4-bit codes as [out, in] integers 0..15."""
        return torch.stack([self.qweight & 15, self.qweight >> 4], dim=-1).reshape(self.out_features, -1)

    def dequantize(self) -> torch.Tensor:
        q = self.unpacked().float().reshape(self.out_features, -1, self.group_size)
        return ((q - 8) * self.scales[..., None] + self.zeros[..., None]).reshape(self.out_features, -1)

    def pack(self) -> None:
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.unpacked().to(torch.int32), 1)
        pairs = torch.stack([self.scales, self.zeros], dim=-1)  # [out, groups, 2]
        self.scales_and_zeros = pairs.transpose(0, 1).contiguous().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales_and_zeros)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def check_shape(method: str, in_features: int, out_features: int, group_size: int, name: str = "a Linear layer") -> None:
    """The kernels' shape rules; torch's int8 weight-only kernel returns garbage (or crashes) when they are broken."""
    if method in ("int8", "int4") and in_features % 16:
        raise StentorError(
            f"{method} needs in_features divisible by 16 (torch's CPU int8 weight-only kernel): {name} has "
            f"{in_features} inputs; use --method int8-dynamic"
        )
    if method != "int4":
        return
    if in_features % group_size:
        fits = next((g for g in GROUP_SIZES if in_features % g == 0), None)
        fix = f"pass --group-size {fits}" if fits else "use --method int8"
        raise StentorError(
            f"int4 needs in_features divisible by the group size: {name} has {in_features} inputs, "
            f"group size {group_size}; {fix}"
        )
    if out_features % 16:
        raise StentorError(
            f"int4 needs out_features divisible by 16 (torch's CPU int4 kernel): {name} has {out_features}; "
            "use --method int8"
        )


def body_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear in the decoder stack (not lm_head, which is handled with the embedding)."""
    found = {name: m for name, m in model.model.named_modules() if isinstance(m, nn.Linear)}
    if any(m.bias is not None for m in found.values()):
        raise StentorError("this model's Linear layers have biases; stentor quantize supports bias-free Llama layers")
    return {f"model.{name}": m for name, m in found.items()}


def output_class(cfg: QuantConfig) -> type[Int8Linear]:
    return Int8DynamicLinear if cfg.method == "int8-dynamic" else Int8Linear


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def check_model(model: nn.Module, cfg: QuantConfig) -> dict[str, nn.Linear]:
    if not hasattr(model, "model") or not hasattr(model, "lm_head"):
        raise StentorError(f"stentor quantize works on *ForCausalLM models with .model and .lm_head; got {type(model).__name__}")
    linears = body_linears(model)
    for name, linear in linears.items():
        check_shape(cfg.method, linear.in_features, linear.out_features, cfg.group_size, name)
    check_shape("int8" if cfg.method == "int4" else cfg.method, model.lm_head.in_features, 0, 0, "lm_head")
    return linears


def load_quantized(path: str | os.PathLike) -> nn.Module:
    """A `LlamaForCausalLM` with quantized Linear modules from a `stentor quantize` directory, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not is_quantized_dir(path):
        raise StentorError(f"{path} is not a `stentor quantize` output (no stentor quantization_config in config.json)")
    data = read_json(path / "config.json", fix="quantize the model again")
    cfg = QuantConfig.from_dict(data.pop("quantization_config"))
    try:
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**data)).eval()
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:  # a config no model class can be built from
        raise StentorError(f"{path / 'config.json'} does not describe a model ({str(exc)[:80]}); the file is damaged; "
                           "quantize the model again") from None  # fmt: skip
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise StentorError(f"cannot read {path / 'model.safetensors'}: {exc}; quantize the model again") from None
    for name, linear in check_model(model, cfg).items():
        if cfg.method == "int4":
            set_module(model, name, Int4Linear(linear.in_features, linear.out_features, cfg.group_size))
        else:
            set_module(model, name, output_class(cfg)(linear.in_features, linear.out_features))
    model.lm_head = output_class(cfg)(model.lm_head.in_features, model.lm_head.out_features)
    embed = tensors.pop("model.embed_tokens.qweight", None), tensors.pop("model.embed_tokens.scales", None)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if m != "model.embed_tokens.weight"]
    if missing or unexpected:
        raise StentorError(
            f"{path / 'model.safetensors'} does not match its config (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); quantize the model again"
        )
    with torch.no_grad():
        table = model.lm_head.dequantize() if embed[0] is None else embed[0].float() * embed[1][:, None]
        model.get_input_embeddings().weight.data = table
    model.stentor_quantization = cfg
    return model
