"""Generation and fast CPU inference: `load`, the decode engine, `stentor generate` and `stentor serve`.

Names are imported on first use so that the CLI (which imports `stentor.infer.cli`) does not pay for torch.
"""

from stentor.lazy import lazy_exports

_EXPORTS = {
    "Stentor": "stentor.infer.api",
    "load": "stentor.infer.api",
    "sampling_params": "stentor.infer.api",
    "Engine": "stentor.infer.engine",
    "Step": "stentor.infer.engine",
    "SamplingParams": "stentor.infer.sampling",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
