"""Fixtures for training tests (helpers live in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import make_corpus, make_tokenizer


@pytest.fixture(scope="session")
def corpus_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train-data")
    corpus = make_corpus(root / "corpus.jsonl")
    return corpus, make_tokenizer(root / "tokenizer", corpus)
