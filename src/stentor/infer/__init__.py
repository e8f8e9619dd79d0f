"""Generation and fast CPU inference: `load`, the decode engine, `stentor generate` and `stentor serve`."""

from stentor.infer.api import Stentor, load, sampling_params
from stentor.infer.engine import Engine, Step
from stentor.infer.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams", "Stentor", "Step", "load", "sampling_params"]
