"""Generation and fast CPU inference: `load`, the decode engine, `stentor generate` and `stentor serve`.

Names are imported on first use so that the CLI (which imports `stentor.infer.cli`) does not pay for torch.
"""

import importlib

_EXPORTS = {
    "Stentor": "stentor.infer.api",
    "load": "stentor.infer.api",
    "sampling_params": "stentor.infer.api",
    "Engine": "stentor.infer.engine",
    "Step": "stentor.infer.engine",
    "SamplingParams": "stentor.infer.sampling",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stentor.infer' has no attribute {name!r}")
