"""stentor: train, evaluate, run, quantize, export and serve Stentor2-class tiny language models."""

from stentor.errors import StentorError

__version__ = "0.1.0"

__all__ = ["StentorError", "__version__"]
