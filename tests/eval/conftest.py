"""Fixtures: a tiny Llama saved as an HF dir with a real byte-level BPE tokenizer beside it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = (
    "the a cat dog child teacher story house garden river small big happy sad red blue runs ran sees saw "
    "likes liked finds found is was are were has had will can not every some many no which who that this "
    "these those himself herself themselves quickly slowly near under over because and but or"
).split()


def english_like(n_sentences: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        out.append(" ".join(words).capitalize() + rng.choice([".", ".", "?", "!"]))
    return " ".join(out)


def build_bpe_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([english_like(400, seed=1)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def save_tiny_model(out: Path, preset: str = "stentor2-tiny", std: float | None = None, tokenizer=None) -> Path:
    """A tiny model; `std` re-initializes it with larger weights so context visibly changes the logits."""
    from stentor.model import get_preset
    from stentor.model.build import build_model, initialize_weights, save_model_dir

    cfg = get_preset(preset)
    model = build_model(cfg, seed=0)
    if std is not None:
        initialize_weights(model, std)
        model.tie_weights()
    save_model_dir(model, cfg, out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return build_bpe_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    """stentor2-tiny with sharp weights (std 0.3) and the BPE tokenizer, as one HF directory."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", std=0.3, tokenizer=bpe_tokenizer)


@pytest.fixture(scope="session")
def model_and_tokenizer(model_dir):
    from stentor.eval import load_model_and_tokenizer

    return load_model_and_tokenizer(str(model_dir))


@pytest.fixture(scope="session")
def trained_model(bpe_tokenizer):
    """stentor2-tiny-gqa trained briefly on english_like text: margins with a real spread, GQA attention."""
    import torch

    from stentor.model import get_preset
    from stentor.model.build import build_model

    torch.manual_seed(0)
    model = build_model(get_preset("stentor2-tiny-gqa"), seed=0)
    ids = torch.tensor(bpe_tokenizer(english_like(600, seed=5)).input_ids)
    blocks = ids[: len(ids) // 65 * 65].view(-1, 65)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(250):  # to a loss near 3.6: at 120 steps (4.4) the pairs were decided by chance
        batch = blocks[torch.randint(0, len(blocks), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
