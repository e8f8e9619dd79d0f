"""Parallel corpus encoding: worker processes that each load the vocabulary once."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from pathlib import Path

from stentor.tokenizer.tokenmonster import Vocab

_WORKER_VOCAB: Vocab | None = None


def _init_worker(source: str | bytes) -> None:
    global _WORKER_VOCAB
    from stentor.tokenizer import use_fast_backend

    vocab = Vocab.load(source) if isinstance(source, str) else Vocab.from_bytes(source)
    _WORKER_VOCAB = use_fast_backend(vocab)


def _encode_one(text: str | bytes) -> list[int]:
    assert _WORKER_VOCAB is not None
    return _WORKER_VOCAB.encode(text)


def encode_batch(vocab: str | os.PathLike | Vocab, texts: Sequence[str | bytes],
                 num_workers: int | None = None) -> list[list[int]]:
    """Encode many texts in worker processes; the result equals [vocab.encode(t) for t in texts]."""
    workers = num_workers or os.cpu_count() or 1
    if isinstance(vocab, Vocab):
        source: str | bytes = vocab.to_bytes()
    else:
        source = str(Path(vocab))
    if workers <= 1 or len(texts) <= 1:
        from stentor.tokenizer import use_fast_backend

        local = vocab if isinstance(vocab, Vocab) else use_fast_backend(Vocab.load(source))
        return [local.encode(t) for t in texts]
    chunk = max(1, len(texts) // (workers * 4))
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(source,)) as pool:
        return pool.map(_encode_one, texts, chunksize=chunk)
