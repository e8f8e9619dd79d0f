"""The `stentor quantize` format, torch-free: its methods, `quantization_config`, and how to spot a quantized directory.

The layers that compute with it live in `stentor.model.quantized`; the compiled runtime
(`stentor.infer.native`) reads the same tensors without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from stentor.errors import StentorError

QUANT_METHODS = ("int8", "int8-dynamic", "int4")
GROUP_SIZES = (32, 64, 128)
FORMAT_VERSION = 1
QUANT_METHOD = "stentor"  # the `quant_method` we write; anything else is not ours


@dataclass(frozen=True)
class QuantConfig:
    """What `quantization_config` in config.json records."""

    method: str
    group_size: int = 64  # int4 only
    quant_method: str = QUANT_METHOD
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise StentorError(f"unknown quantization method {self.method!r}; choose one of {', '.join(QUANT_METHODS)}")
        if self.group_size not in GROUP_SIZES:
            raise StentorError(f"--group-size {self.group_size} is not supported; choose one of {GROUP_SIZES}")

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        if data.get("quant_method") != QUANT_METHOD or data.get("format_version") != FORMAT_VERSION:
            raise StentorError(
                f"quantization_config {data} was not written by this version of `stentor quantize`; "
                "quantize the float model again"
            )
        return cls(method=data["method"], group_size=data["group_size"])

    def to_dict(self) -> dict:
        return asdict(self)


def is_quantized_dir(path: str | os.PathLike) -> bool:
    """True when `path/config.json` carries a stentor `quantization_config` (for `stentor.load` to dispatch)."""
    config = Path(path) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (data.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD
