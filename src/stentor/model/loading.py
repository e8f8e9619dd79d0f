"""Load a causal LM directory (or a hub id) for any stentor command: safetensors only, one-line errors."""

from __future__ import annotations

import os

from stentor.errors import StentorError


def looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def load_model(spec: str | os.PathLike, device: str = "cpu"):
    """An `AutoModelForCausalLM` in eval mode: a local directory, a `stentor quantize` directory, or a hub id.

    Float models load in float32. Weights are read from safetensors only (never unpickled).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from stentor.model.quant_format import is_quantized_dir
    from stentor.model.quantized import load_quantized

    spec = os.fspath(spec)
    from stentor.hub import local_path

    path = local_path(spec)  # a hub id: downloaded, or the HF cache's copy when offline
    if not path.exists():
        raise StentorError(f"no model directory {spec!r}; pass a directory or a hub id like StentorLabs/Stentor2-12M")
    if path.is_file():
        raise StentorError(f"{path} is a file; pass the model directory (config.json + model.safetensors)")
    if not (path / "config.json").is_file():
        raise StentorError(f"{path} is not a model directory (no config.json); pass a directory saved by stentor")
    if is_quantized_dir(path):
        return load_quantized(path).to(device).eval()
    if not any(path.glob("*.safetensors")):
        raise StentorError(f"{path} has no .safetensors weights; stentor loads safetensors only (convert the model)")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(f"cannot load the model in {path}: {first}") from None
    return model.to(device).eval()
