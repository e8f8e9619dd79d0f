"""Load a causal LM directory (or a hub id) for any stentor command: safetensors only, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

from stentor.errors import StentorError


def looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


# what `--dtype` accepts: float32 (the default; what the CPU engines compute in), a half type, or
# "auto" = the dtype the checkpoint was saved in (config.json's dtype / torch_dtype)
DTYPES = ("float32", "float16", "bfloat16", "auto")


def torch_dtype(name: str | None, path: os.PathLike | None = None):
    """The torch dtype for a `--dtype` name (None = float32); "auto" reads the checkpoint's config."""
    import torch

    name = name or "float32"
    if name not in DTYPES:
        raise StentorError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    if name == "auto":
        import json

        config = json.loads((Path(path) / "config.json").read_text()) if path is not None else {}
        name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        if name not in DTYPES[:3]:
            raise StentorError(f"{path}/config.json: dtype {name!r} is not one of {', '.join(DTYPES[:3])}; pass --dtype")
    return getattr(torch, name)


def load_model(spec: str | os.PathLike, device: str = "cpu", dtype: str | None = None):
    """An `AutoModelForCausalLM` in eval mode: a local directory, a `stentor quantize` directory, or a hub id.

    Float models load in float32 whatever dtype they were saved in (the released fp16 weights
    included), unless `dtype` asks for float16, bfloat16 or "auto" (as saved). Weights are read
    from safetensors only (never unpickled).
    """
    from transformers import AutoModelForCausalLM

    from stentor.fileio import read_json
    from stentor.model.quant_format import is_quantized_dir
    from stentor.model.quantized import load_quantized
    from stentor.model.tensors import map_model_tensors

    spec = os.fspath(spec)
    from stentor.hub import local_path

    path = local_path(spec)  # a hub id: downloaded, or the HF cache's copy when offline
    if not path.exists():
        raise StentorError(f"no model directory {spec!r}; pass a directory or a hub id like StentorLabs/Stentor2-12M")
    if path.is_file():
        raise StentorError(f"{path} is a file; pass the model directory (config.json + model.safetensors)")
    if not (path / "config.json").is_file():
        raise StentorError(f"{path} is not a model directory (no config.json); pass a directory saved by stentor")
    # Every file transformers will read, checked first: a damaged one is named in one line here
    # rather than failing deep inside transformers or safetensors (or being skipped silently).
    read_json(path / "config.json")
    if (path / "generation_config.json").exists():
        read_json(path / "generation_config.json")
    if not any(path.glob("*.safetensors")):
        raise StentorError(f"{path} has no .safetensors weights; stentor loads safetensors only (convert the model)")
    map_model_tensors(path)
    if is_quantized_dir(path):
        if dtype not in (None, "float32", "auto"):
            raise StentorError(f"{path} is a `stentor quantize` directory; its layers have their own dtypes (drop --dtype)")
        return load_quantized(path).to(device).eval()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype, path), use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(f"cannot load the model in {path}: {first}") from None
    except RuntimeError:  # transformers' size-mismatch report: the two files were written for different models
        raise StentorError(f"{path}: model.safetensors does not match config.json (tensor shapes differ); the "
                           "directory is damaged or incomplete") from None
    return model.to(device).eval()
