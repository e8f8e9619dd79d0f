"""TokenMonster tokenizer: native vocabulary core plus the optional numba fast path."""

from __future__ import annotations

import os

from stentor.tokenizer.batch import encode_batch
from stentor.tokenizer.tokenmonster import Vocab, VocabError, build_vocab_from_yaml

__all__ = ["Vocab", "VocabError", "build_vocab_from_yaml", "encode_batch", "load_vocab", "use_fast_backend"]


def use_fast_backend(vocab: Vocab) -> Vocab:
    """Attach the numba kernels to `vocab` when numba is importable (same ids, much faster)."""
    from stentor.tokenizer import fast

    if fast.available():
        vocab.set_backend(fast.backend())
    return vocab


def load_vocab(path: str | os.PathLike) -> Vocab:
    """Load a `.vocab` file with the fastest available tokenizer backend."""
    return use_fast_backend(Vocab.load(path))
