"""The card's T4 mixed-precision recipe as one function for any built Llama-style model.

1. Every RMSNorm computes in FP32 and returns its input dtype (25 modules for stentor2-12m).
2. The first N decoder layers ("critical", default 2) hold FP32 weights and run with autocast
   disabled: inputs cast to FP32, outputs cast back to the caller's dtype.
3. The FP32 softmax wrapper is skipped: SDPA kernels need fp16/bf16 inputs for their fast paths,
   and HF's eager Llama attention already computes its softmax in FP32.

Modules are changed by swapping their class for a subclass with the wrapped `forward`, so the
state dict, `save_pretrained` and `copy.deepcopy` behave exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

FAST_ATTENTION = {"sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"}


@dataclass(frozen=True)
class T4RecipeReport:
    fp32_norms: int
    critical_layers: int
    fp32_softmax: int
    softmax_note: str

    def table(self) -> str:
        rows = [
            ("FP32 norm modules", self.fp32_norms, "All RMSNorm layers"),
            ("FP32 critical layers", self.critical_layers, f"First {self.critical_layers} transformer layers"),
            ("FP32 softmax modules", self.fp32_softmax, self.softmax_note),
        ]
        return "\n".join(f"{name:<22} {count:>3}  {scope}" for name, count, scope in rows)


def _autocast_off(device_type: str):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    if isinstance(value, list):
        return [_to_fp32(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


def _to_dtype(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_dtype(v, dtype) for v in value)
    return value


class _FP32NormMixin:
    """RMSNorm in FP32; `.clone()` so callers never hold a buffer the graph may reuse."""

    _stentor_fp32 = True

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        dtype = hidden_states.dtype
        with _autocast_off(hidden_states.device.type):
            out = super().forward(hidden_states.float().contiguous(), *args, **kwargs)
        return out.clone().to(dtype)


class _FP32LayerMixin:
    """A whole decoder layer in FP32 with autocast off, returning the caller's dtype."""

    _stentor_fp32 = True

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        dtype = hidden_states.dtype
        with _autocast_off(hidden_states.device.type):
            out = super().forward(hidden_states.float(), *_to_fp32(args), **_to_fp32(kwargs))
        return _to_dtype(out, dtype)


@cache
def _wrapped_class(mixin: type, cls: type) -> type:
    return type(f"FP32{cls.__name__}", (mixin, cls), {"__module__": cls.__module__})


def _wrap(module: nn.Module, mixin: type) -> bool:
    if getattr(module, "_stentor_fp32", False):
        return False
    module.__class__ = _wrapped_class(mixin, type(module))
    return True


def _is_rmsnorm(module: nn.Module) -> bool:
    return "rmsnorm" in type(module).__name__.lower()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no decoder `layers` list; the T4 recipe needs a Llama-style model")
    return layers


def apply_t4_recipe(model: nn.Module, critical_layers: int = 2, fp32_norms: bool = True) -> T4RecipeReport:
    """Apply the card's T4 recipe in place and return what was changed (idempotent)."""
    layers = decoder_layers(model)
    if not 0 <= critical_layers <= len(layers):
        raise ValueError(f"critical_layers must be in 0..{len(layers)}, got {critical_layers}")

    norms = 0
    if fp32_norms:
        for module in model.modules():
            if _is_rmsnorm(module):
                module.float()
                _wrap(module, _FP32NormMixin)
                norms += 1

    for layer in layers[:critical_layers]:
        layer.float()
        _wrap(layer, _FP32LayerMixin)

    attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if attn in FAST_ATTENTION:
        note = f"Skipped - {attn} kernels need fp16/bf16 inputs for their fast paths"
        log.info("Stability tricks: skipping FP32 softmax wrapper because %s kernels require fp16/bf16 inputs", attn)
    else:
        note = f"Not needed - {attn} attention already computes softmax in FP32"
        log.info("Stability tricks: no FP32 softmax wrapper: %s attention already computes softmax in FP32", attn)

    report = T4RecipeReport(fp32_norms=norms, critical_layers=critical_layers, fp32_softmax=0, softmax_note=note)
    log.info("T4 mixed-precision recipe applied:\n%s", report.table())
    return report
