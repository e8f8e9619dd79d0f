"""The offline vocabulary trainer: strict candidates, exact size, lossless, better than bytes and BPE."""

from __future__ import annotations

import json
import random
import re
import unicodedata

import pytest

from stentor.errors import StentorError
from stentor.tokenizer import load_vocab
from stentor.tokenizer.train import TrainConfig, count_candidates, read_corpus, train_vocab

WORDS = (
    "the of and to in is was that for on with as by at from his her they which this be have had not but are were "
    "one all there their when who will would more about out time can said could people into some them other than "
    "then now only its over also after most made new first many these may well should system function return value "
    "list instance method object class module string number python language model token vocabulary training data "
    "little girl boy dog cat sun garden happy played ran jumped laughed friend mother father school tree naïve café"
).split()


def make_text(n_sentences: int, seed: int) -> str:
    """English-like text: Zipf-ish word choice, capitals, punctuation, numbers, quotes, newlines."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) for k in range(len(WORDS))]
    lines = []
    for _ in range(n_sentences):
        words = rng.choices(WORDS, weights, k=rng.randint(4, 14))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 2030)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:]
        if rng.random() < 0.15:
            sentence = f'"{sentence}," she said'
        lines.append(sentence + rng.choice([".", ".", "!", "?", "..."]))
    return "\n".join(" ".join(lines[i : i + 3]) for i in range(0, len(lines), 3)) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text(make_text(3000, seed=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "small.vocab"
    vocab = train_vocab([str(corpus)], TrainConfig(vocab_size=500, min_occur=2), out)
    return vocab, out


def test_trained_vocab_has_the_requested_shape(trained):
    vocab, out = trained
    assert vocab.vocab_size == 500
    assert (vocab.mode, vocab.capcode, vocab.charset_name, vocab.normalization_name) == (4, 1, "utf-8", "NFD")
    assert vocab.delete_token_id is not None and vocab.id_to_token(vocab.delete_token_id) == b"\x7f"
    assert load_vocab(out).to_bytes() == vocab.to_bytes()
    assert {t.token for t in vocab.tokens() if t.type == 1} >= {bytes([b]) for b in range(0x20, 0x7F)}


def test_trained_tokens_obey_strict_mode(trained):
    letter = r"(?:[^\W\d_]|[\u0300-\u036f])"
    word = f"{letter}+(?:['\u2019]{letter}+)*"
    allowed = re.compile(f"( ?{word}(?: {word})*| ?\\d+|[^\\w\x7f]+\x7f?|_+)")
    tokens = [t.token.decode("utf-8") for t in trained[0].tokens() if t.type == 0]
    bad = [t for t in tokens if not allowed.fullmatch(t)]
    assert not bad
    assert any(" " in t.strip() for t in tokens)  # multi-word tokens exist (` of the`)


def test_trained_vocab_is_lossless_and_compresses(trained):
    vocab, _ = trained
    held_out = make_text(300, seed=2) + "Ünïcödé 日本語 😀 tab\there\r\n"
    ids = vocab.encode(held_out.encode())
    assert vocab.decode(ids).decode("utf-8") == unicodedata.normalize("NFD", held_out)
    assert len(held_out) / len(ids) > 3.0  # single bytes would give < 1


def test_beats_byte_level_bpe_of_the_same_size(trained, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train([str(corpus)], trainer)
    held_out = make_text(300, seed=3)
    ours = len(trained[0].encode(held_out.encode()))
    theirs = len(bpe.encode(held_out).ids)
    assert ours < theirs


def test_candidates_never_cross_word_boundaries():
    text = '\x7f Hello world, the cat\'s "toy" 1984 tokens!\n\x7f Again'
    cands = count_candidates(text * 5, TrainConfig(min_occur=1))
    assert {" world", " the cat's", "Hello", ' "', "19", " 19", ", ", "\n\x7f", "!\n\x7f"} <= set(cands)
    assert not [c for c in cands if re.search(r"[A-Za-z][,!\"]|[,!\"][A-Za-z]|\x7f.", c)]
    assert ' "toy' not in cands and "1984" not in cands  # punctuation and words apart; numbers in short pieces


def test_read_corpus_txt_jsonl_and_globs(tmp_path):
    (tmp_path / "a.txt").write_text("first document", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third", "id": 3}\n', encoding="utf-8")
    assert read_corpus([str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl")]) == ["first document", "second", "third"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(StentorError, match=r"bad.jsonl:2: not valid JSON"):
        read_corpus([str(tmp_path / "bad.jsonl")])
    (tmp_path / "nofield.jsonl").write_text(json.dumps({"content": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(StentorError, match='"text" string field'):
        read_corpus([str(tmp_path / "nofield.jsonl")])
    with pytest.raises(StentorError, match="no corpus file matches"):
        read_corpus([str(tmp_path / "missing-*.txt")])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "clean"}, "unknown mode"),
        ({"capcode": 0}, "strict mode needs capcode"),
        ({"max_token_length": 41}, "max token length"),
        ({"single_bytes": "latin1"}, "single-byte set"),
    ],
)
def test_bad_settings_fail_before_work(changes, message):
    with pytest.raises(StentorError, match=message):
        TrainConfig(**changes)


def test_size_below_single_bytes_and_bad_normalization_fail_early(tmp_path):
    with pytest.raises(StentorError, match="leaves no room"):
        train_vocab(["/nonexistent/corpus.txt"], TrainConfig(vocab_size=250, single_bytes="256"))
    with pytest.raises(StentorError, match="could not build"):
        train_vocab(["/nonexistent/corpus.txt"], TrainConfig(normalization="sideways"))
