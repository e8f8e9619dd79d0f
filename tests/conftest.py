"""Shared fixtures. `shared_dir` points at ../shared (real public data); tests that use it skip when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STENTOR_SHARED", REPO.parent / "shared"))
# train_helpers (a corpus, a tokenizer and recipes for tiny runs) serves tests outside tests/train too.
sys.path.insert(0, str(REPO / "tests" / "train"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (real public data for optional tests)")
    return SHARED


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


@pytest.fixture(scope="session")
def story_model(tmp_path_factory) -> Path:
    """The small trained model the browser tests show (tests/browser.py), trained once per run."""
    from browser import train_story_model

    return train_story_model(tmp_path_factory.mktemp("story") / "story")
