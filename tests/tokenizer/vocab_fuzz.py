"""Shared by the tokenizer tests: random byte corruptions of a vocabulary file."""

from __future__ import annotations

import random

from stentor.tokenizer.tokenmonster import Vocab, VocabError


def assert_corruptions_rejected_or_clean(raw: bytes, *, seed: int, rounds: int, max_flips: int, text: str) -> None:
    """Each corrupted copy must raise VocabError or load into a vocab that still encodes and decodes."""
    rng = random.Random(seed)
    for _ in range(rounds):
        data = bytearray(raw)
        for _ in range(rng.randint(1, max_flips)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            vocab = Vocab.from_bytes(bytes(data))
        except VocabError:
            continue
        vocab.decode(vocab.encode(text))
