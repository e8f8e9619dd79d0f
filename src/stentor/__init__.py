"""stentor: train, evaluate, run, quantize, export and serve Stentor2-class tiny language models."""

from stentor.errors import StentorError

__version__ = "0.1.0"

__all__ = ["StentorError", "__version__", "load"]


def __getattr__(name: str):
    # `stentor.load` pulls in torch/transformers only when first used, so `import stentor` stays light.
    if name == "load":
        from stentor.infer.api import load

        return load
    raise AttributeError(f"module 'stentor' has no attribute {name!r}")
