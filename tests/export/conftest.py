"""Tiny random-init Llama models saved with a real byte-level BPE tokenizer trained here (no shared/ needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXT = (
    "Once upon a time a small robot lived by the sea. It counted waves and wrote them down. "
    "The robot liked numbers: 1, 2, 3, 42. One day a gull asked why; the robot said it was fun. "
) * 30


def bpe_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["</s>", "<s>"], initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def save_model(out: Path, preset: str = "stentor2-tiny", seed: int = 0, **changes) -> Path:
    """A preset with a 384-token vocabulary (fast tests) and the BPE tokenizer's special ids, saved with it."""
    from stentor.model import get_preset
    from stentor.model.build import build_model, save_model_dir

    tokenizer = bpe_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    cfg = get_preset(preset).replace(vocab_size=384, pad_token_id=ids["eos_token_id"], **ids, **changes)
    save_model_dir(build_model(cfg, seed=seed), cfg, out)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="session")
def gqa_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("export") / "gqa", "stentor2-tiny-gqa")


@pytest.fixture(scope="session")
def untied_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("export") / "untied", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def make_model():
    """`make_model(out_dir, preset=..., **config_changes)` for tests that need an unusual shape."""
    return save_model
