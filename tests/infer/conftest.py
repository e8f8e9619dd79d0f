"""A tiny random-init model saved with a real (byte-level BPE) tokenizer trained on text written here."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXT = (
    "The history of computing is long. Schools teach students about research and curriculum. "
    "A small model writes short stories: once upon a time a cat sat on a mat and looked at the sky. "
    "Café, naïve, 東京 and emoji 🙂 are UTF-8 text with multi-byte characters. "
) * 20


def make_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<eos>",
        chat_template="{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}",
    )


def save_tiny(out: Path, preset: str) -> Path:
    from stentor.model.build import build_model, save_model_dir
    from stentor.model.presets import get_preset

    tokenizer = make_tokenizer(400)
    cfg = get_preset(preset).replace(
        vocab_size=512, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    save_model_dir(build_model(cfg, seed=0), cfg, out)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def bpe():
    return make_tokenizer(300)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("infer") / "tiny", "stentor2-tiny")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    import stentor

    return stentor.load(tiny_dir)
