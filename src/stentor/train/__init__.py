"""Training on HF Accelerate: the card's recipe as a config, exact resume, curves, best/final model dirs.

    from stentor.train import load_config, train
    result = train(load_config("configs/tiny-cpu.yaml"), "runs/tiny")

Names are imported on first use so that `stentor --help` does not pay for torch.
"""

from stentor.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "stentor.train.config",
    "load_config": "stentor.train.config",
    "Plan": "stentor.train.plan",
    "make_plan": "stentor.train.plan",
    "Trainer": "stentor.train.trainer",
    "TrainResult": "stentor.train.trainer",
    "train": "stentor.train.trainer",
    "resume": "stentor.train.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
