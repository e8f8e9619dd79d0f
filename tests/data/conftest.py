"""A real, offline tokenizer for the data tests: byte-level BPE trained here on text we write."""

from __future__ import annotations

import random

import pytest

WORDS = ("the cat dog sat on a mat and ran far away while birds sang over green hills "
         "under bright sky every day some people read old books near quiet rivers").split()


def _make_docs(n: int, seed: int = 0) -> list[str]:
    """`n` distinct multi-line documents of varied length."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 4))]
        docs.append(f"doc {i}: " + "\n".join(lines))
    return docs


@pytest.fixture(scope="session")
def make_docs():
    return _make_docs


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_make_docs(300, seed=1), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
