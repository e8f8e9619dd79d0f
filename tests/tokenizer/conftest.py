"""Fixtures for the tokenizer tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tm_dir(shared_dir: Path) -> Path:
    """The official TokenMonster test vectors (../shared/tokenmonster); tests that use them skip when absent."""
    path = shared_dir / "tokenmonster"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
