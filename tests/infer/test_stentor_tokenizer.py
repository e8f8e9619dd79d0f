"""Generation with the real StentorTokenizer over the official TokenMonster vocabulary (needs shared/)."""

from __future__ import annotations

import pytest

from stentor.infer.api import Stentor
from stentor.infer.text import replacement_only, token_bytes
from stentor.model.build import build_model
from stentor.model.presets import get_preset

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def lm(shared_dir):
    from stentor.tokenizer.hf import tokenizer_from_vocab

    tokenizer = tokenizer_from_vocab(shared_dir / "tokenmonster/vocabs/english-8000-strict-cap1-oracle.vocab")
    model = build_model(get_preset("stentor2-tiny"), seed=0)
    return Stentor(model, tokenizer)


def test_stream_equals_generate(lm):
    assert lm.eos_ids == {8000}
    text = lm.generate("The history of computing", seed=3, max_new_tokens=40)
    assert "".join(lm.stream("The history of computing", seed=3, max_new_tokens=40)) == text


def test_no_replacement_characters_with_the_official_vocab(lm):
    guard = lm.utf8_guard()
    data = token_bytes(lm.tokenizer, lm.vocab_size)
    # every byte token of this vocabulary is a valid piece of some character: none is banned always
    assert not guard.banned.all(0).any()
    assert all(not replacement_only(d) for d in data if d is not None)
    byte_id = {d: i for i, d in enumerate(data) if d is not None and len(d) == 1 and d[0] >= 0x80}
    start = guard.start([lm.encode("Academics")])
    assert guard.banned[start[0], byte_id[b"\xa9"]] and not guard.banned[start[0], byte_id[b"\xc3"]]
    assert lm.tokenizer.decode([byte_id[b"\xa9"]]) == "\ufffd"  # a lone byte token renders as U+FFFD
    wild = dict(seed=1, temperature=1.5, top_p=1.0, max_new_tokens=80, num_samples=4)
    assert not any("\ufffd" in text for text in lm.generate("Academics", suppress_replacement_tokens=True, **wild))
