"""TokenMonster tokenizer: native vocabulary core plus the optional numba fast path.

Names are imported on first use, so that the CLI's `--help` does not load the vocabulary core.
"""

from __future__ import annotations

import os

from stentor.lazy import lazy_exports

_EXPORTS = {
    "encode_batch": "stentor.tokenizer.batch",
    "Vocab": "stentor.tokenizer.tokenmonster",
    "VocabError": "stentor.tokenizer.tokenmonster",
    "build_vocab_from_yaml": "stentor.tokenizer.tokenmonster",
}
__all__ = sorted([*_EXPORTS, "load_vocab", "use_fast_backend"])
__getattr__ = lazy_exports(__name__, _EXPORTS)


def use_fast_backend(vocab):
    """Attach the numba kernels to `vocab` when numba is importable (same ids, much faster)."""
    from stentor.tokenizer import fast

    if fast.available():
        vocab.set_backend(fast.backend())
    return vocab


def load_vocab(path: str | os.PathLike):
    """Load a `.vocab` file with the fastest available tokenizer backend."""
    from stentor.tokenizer.tokenmonster import Vocab

    return use_fast_backend(Vocab.load(path))
