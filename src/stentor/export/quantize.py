"""`stentor quantize`: turn a float `*ForCausalLM` into the quantized format (stentor.model.quantized) and save it.

Every Linear of the decoder stack becomes the method's module; the tied embedding/lm_head matrix
is stored once as int8 rows (see the format's docstring in stentor.model.quantized).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from stentor.errors import StentorError
from stentor.fileio import atomic_dir
from stentor.model.quant_format import QuantConfig, is_quantized_dir
from stentor.model.quantized import (
    Int4Linear,
    Int8DynamicLinear,
    Int8Linear,
    int8_rows,
    check_model,
    output_class,
    set_module,
)

__all__ = ["QuantConfig", "check_quantizable", "quantize_dir", "quantize_model", "quantized_state_dict", "save_quantized"]

MODEL_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}


def _make(cfg: QuantConfig, linear: nn.Linear) -> nn.Module:
    if cfg.method == "int4":
        return Int4Linear.from_weight(linear.weight, cfg.group_size)
    if cfg.method == "int8-dynamic":
        return Int8DynamicLinear.from_weight(linear.weight)
    return Int8Linear.from_weight(linear.weight)


@torch.no_grad()
def quantize_model(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Replace the Linear layers of a float `*ForCausalLM` in place (see the module docstring)."""
    linears = check_model(model, cfg)
    for name, linear in linears.items():
        set_module(model, name, _make(cfg, linear))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    output = output_class(cfg).from_weight(model.lm_head.weight)
    model.lm_head = output
    embed = model.get_input_embeddings()
    # The table that feeds the first layer is what lm_head's int8 rows dequantize to (tied) or its own int8 copy.
    embed.weight.data = output.dequantize() if tied else Int8Linear.from_weight(embed.weight).dequantize()
    model.stentor_quantization = cfg
    return model.eval()


def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What goes into model.safetensors: quantized buffers, norms, and the untied embedding as int8."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "model.embed_tokens.weight":
            if not model.config.tie_word_embeddings:
                qweight, scales = int8_rows(tensor)
                tensors["model.embed_tokens.qweight"], tensors["model.embed_tokens.scales"] = qweight, scales
            continue
        tensors[name] = tensor.contiguous()
    return tensors


def save_quantized(model: nn.Module, out_dir: str | os.PathLike, source_dir: str | os.PathLike | None = None) -> Path:
    """Write a quantized model directory atomically; copy tokenizer/generation files from `source_dir`."""
    from safetensors.torch import save_file

    cfg: QuantConfig = model.stentor_quantization
    config = model.config.to_dict()
    config["quantization_config"] = cfg.to_dict()
    with atomic_dir(out_dir) as tmp:
        if source_dir is not None:
            for item in Path(source_dir).iterdir():
                if item.is_file() and item.name not in MODEL_FILES:
                    shutil.copy2(item, tmp / item.name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(quantized_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return Path(out_dir)


def check_quantizable(model_dir: str | os.PathLike, cfg: QuantConfig) -> None:
    """Shape checks on a weightless (meta) copy of the model, before any weights are read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (Path(model_dir) / "config.json").is_file():
        raise StentorError(f"--model {model_dir} has no config.json; pass a directory written by save_pretrained")
    if is_quantized_dir(model_dir):
        raise StentorError(f"{model_dir} is already quantized; quantize the float model instead")
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise StentorError(f"cannot read {Path(model_dir) / 'config.json'}: {str(exc).splitlines()[0]}") from None
    with torch.device("meta"):
        check_model(AutoModelForCausalLM.from_config(config), cfg)


def quantize_dir(model_dir: str | os.PathLike, out_dir: str | os.PathLike, method: str, group_size: int = 64) -> Path:
    """`stentor quantize`: load a float model directory, quantize it, save it beside its tokenizer files."""
    from stentor.model.loading import load_model
    from stentor.fileio import ensure_writable_dir

    cfg = QuantConfig(method=method, group_size=group_size)
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise StentorError("the output directory is the input model directory; pass a new -o path")
    ensure_writable_dir(Path(out_dir).parent)
    check_quantizable(model_dir, cfg)
    model = load_model(os.fspath(model_dir))
    return save_quantized(quantize_model(model, cfg), out_dir, model_dir)
