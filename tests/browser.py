"""Helpers for tests that drive real headless Chromium (Debian's package) with Playwright, and the small
trained model they show: a tiny Llama on a TokenMonster vocabulary, so its tokens are Stentor tokens and its
text has some structure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium on a machine without a network: no first-run, sync or background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
WORDS = "once upon a time the cat sat on mat and dog ran home big small red sky looked at".split()


def need_browser() -> None:
    """CI installs both (.ci/run); elsewhere the tests skip with the install line."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium here: apt-get install -y chromium")


def train_story_model(out: Path) -> Path:
    """A tiny model trained for seconds on sentences from WORDS, with a StentorTokenizer (and the card's chat
    template); its context is long enough that a generation lasts for seconds."""
    import random

    import torch

    from stentor.model import get_preset
    from stentor.model.build import build_model, save_model_dir
    from stentor.model.presets import padded_vocab_size
    from stentor.tokenizer.hf import StentorTokenizer
    from stentor.tokenizer.tokenmonster import build_vocab_from_yaml

    lines = ["charset: utf-8", "capcode: 0", "normalization: none", "include-256-bytes: true", "tokens:"]
    for w in WORDS:
        lines += [f'  - token: "{w}"', f'  - token: " {w}"']
    tokenizer = StentorTokenizer.from_vocab(build_vocab_from_yaml("\n".join(lines) + "\n"))
    cfg = get_preset("stentor2-tiny").replace(
        vocab_size=padded_vocab_size(len(tokenizer)), max_position_embeddings=16384,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    rng = random.Random(0)
    text = " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(800))
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)
    blocks = ids[: len(ids) // 65 * 65].view(-1, 65)
    torch.manual_seed(0)
    model = build_model(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        batch = blocks[torch.randint(0, len(blocks), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model_dir(model.eval(), cfg, out, tokenizer=tokenizer)
