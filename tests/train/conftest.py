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


@pytest.fixture
def fresh_accelerate():
    """For in-process trainers: reset accelerate's process-wide state (precisions differ between tests)
    and use one torch thread, as the subprocess runs do (shared CI cores, deterministic kernels)."""
    import torch
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)
