"""StentorTokenizer: id layout, encode/decode, specials, chat template, streaming, save/load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stentor.errors import StentorError
from stentor.model.presets import padded_vocab_size, stentor2_special_ids
from stentor.tokenizer import build_vocab_from_yaml
from stentor.tokenizer.hf import CHAT_TEMPLATE, StentorTokenizer, load_tokenizer, save_tokenizer
from stentor.tokenizer.tokenization_stentor import padded_size, str_to_token_bytes, token_bytes_to_str

TINY_YAML = """\
charset: utf-8
normalization: nfd
capcode: 1
include-utf8-bytes: true
tokens:
  - token: " the"
    encoded: true
  - token: " cat"
    encoded: true
  - token: " sat"
    encoded: true
  - token: " on"
    encoded: true
  - token: "Hello"
    encoded: true
  - token: " world"
    encoded: true
  - token: "ing"
    encoded: true
  - token: " caf"
    encoded: true
  - token: ". "
    encoded: true
  - token: "<s"
    encoded: true
"""
SAMPLES = [
    "Hello world. The cat sat on the mat",
    "naïve café — “quoted” 😀 日本語",
    "(Hello)world DEL and 123 numbers",
    "",
]


@pytest.fixture(scope="module")
def tiny_vocab():
    return build_vocab_from_yaml(TINY_YAML)


@pytest.fixture(scope="module")
def tok(tiny_vocab):
    return StentorTokenizer.from_vocab(tiny_vocab)


@pytest.fixture(scope="module")
def oracle(shared_dir):
    return load_tokenizer(shared_dir / "tokenmonster/vocabs/english-8000-strict-cap1-oracle.vocab")


def test_padding_formula_agrees_with_presets():
    for base in (1, 125, 126, 127, 4000, 7999, 8000, 8062, 8063, 32000):
        assert padded_size(base) == padded_vocab_size(base)


def test_layout_matches_model_presets(tok, tiny_vocab):
    base = tiny_vocab.id_table_size
    assert tok.vocab_size == base
    assert len(tok) == padded_vocab_size(base) == len(tok.get_vocab())
    ids = stentor2_special_ids(base)
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (
        ids["eos_token_id"],
        ids["bos_token_id"],
        ids["pad_token_id"],
    )
    assert tok.unk_token_id is None
    assert tok.convert_ids_to_tokens(len(tok) - 1) == f"<reserved_{len(tok) - base - 3}>"


def test_oracle_vocab_is_8064(oracle):
    assert (len(oracle), oracle.vocab_size) == (8064, 8000)
    assert (oracle.eos_token_id, oracle.bos_token_id, oracle.pad_token_id) == (8000, 8001, 8000)
    assert oracle.convert_ids_to_tokens([8000, 8001, 8002, 8063]) == ["</s>", "<s>", "<reserved_0>", "<reserved_61>"]


def test_vocab_with_unk_gaps_and_specials(shared_dir):
    root = shared_dir / "tokenmonster"
    tok = load_tokenizer(root / "vocabs/tm_utf8_cap1_nfd_unk.vocab")
    vocab = tok.vocab
    assert (vocab.unk_id, vocab.id_table_size) == (2600, 2901)
    assert len(tok) == padded_vocab_size(2901) == len(set(tok.convert_ids_to_tokens(list(range(len(tok))))))
    assert tok.unk_token_id == 2600 and tok.convert_ids_to_tokens(2600) == "<unk>"
    gaps = [i for i in range(2901) if vocab.id_to_token(i) is None and i != 2600]
    assert gaps and tok.convert_ids_to_tokens(gaps[0]) == f"<unused_{gaps[0]}>"
    names = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert tok.convert_tokens_to_ids(names) == list(range(len(tok)))
    cases = [json.loads(line) for line in (root / "encode/tm_utf8_cap1_nfd_unk.jsonl").open()][:120]
    for case in cases:
        if "text" in case and not any(s in case["text"] for s in ("<s>", "</s>", "<unk>", "<reserved_")):
            assert tok.encode(case["text"]) == [tok.bos_token_id, *case["ids"]]


def test_encode_is_bos_plus_tokenmonster(tok, tiny_vocab):
    for text in SAMPLES:
        assert tok.encode(text) == [tok.bos_token_id, *tiny_vocab.encode(text.encode())]
        assert tok.encode(text, add_special_tokens=False) == tiny_vocab.encode(text.encode())
    eos = StentorTokenizer.from_vocab(tiny_vocab, add_bos_token=False, add_eos_token=True)
    assert eos.encode("the cat") == [*tiny_vocab.encode(b"the cat"), eos.eos_token_id]


def test_batch_padding_uses_eos(tok):
    batch = tok(["the cat", "Hello world. the cat sat"], padding=True)
    short, long = batch["input_ids"]
    assert len(short) == len(long) and short[-1] == tok.eos_token_id
    assert batch["attention_mask"][0][-1] == 0


def test_special_strings_in_text_become_specials(tok, tiny_vocab):
    ids = tok.encode("the</s>cat<s><reserved_2>", add_special_tokens=False)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert ids == [*tiny_vocab.encode(b"the"), eos, *tiny_vocab.encode(b"cat"), bos, bos + 3]
    # "<s" is a plain TokenMonster token; only the exact special string is special
    assert eos not in tok.encode("<s and </ s>") and bos not in tok.encode("<s and </ s>", add_special_tokens=False)


def test_decode_specials_and_skip(tok):
    ids = tok.encode("Hello world.</s>the cat")
    assert tok.decode(ids) == "<s>Hello world.</s>the cat"
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world.the cat"
    assert tok.decode([tok.bos_token_id + 5, 10_000_000]) == "<reserved_4>"  # unknown ids give nothing
    assert tok.decode(tok.encode("the cat\n\tsat")[1:]) == "the cat\n\tsat"


def test_decode_roundtrips_nfd_text(tok):
    import unicodedata

    for text in SAMPLES:
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == unicodedata.normalize("NFD", text)


def test_token_names_are_printable_unique_and_roundtrip(tok, tiny_vocab):
    names = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert len(set(names)) == len(tok)
    assert all(name.isprintable() for name in names)
    assert tok.convert_tokens_to_ids(names) == list(range(len(tok)))
    for info in tiny_vocab.tokens():
        if info.type != 3:
            assert str_to_token_bytes(names[info.id]) == info.token
    assert names[tiny_vocab.delete_token_id] == "\\x7f"
    ids = tok.encode("Hello world. the cat", add_special_tokens=False)
    assert tok.convert_tokens_to_string(tok.convert_ids_to_tokens(ids)) == "Hello world. the cat"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_token_name_encoding_is_reversible(data):
    name = token_bytes_to_str(data)
    assert name.isprintable() or name == ""
    assert str_to_token_bytes(name) == data


def test_chat_template_is_the_cards(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nHi there\n<|assistant|>\nHello\n<|assistant|>\n"
    assert tok.apply_chat_template(messages[:1], tokenize=False) == "<|user|>\nHi there\n"


def _streamed(tok, ids, cuts, skip=True):
    dec = tok.streaming_decoder(skip_special_tokens=skip)
    bounds = [0, *cuts, len(ids)]
    parts = [dec.push(ids[a:b]) for a, b in zip(bounds, bounds[1:])]
    return parts, "".join(parts) + dec.flush()


def _stream_cases(tok, vocab):
    marker = vocab.delete_token_id
    accent = vocab.encode("é".encode())  # NFD: e + two bytes of U+0301, one token each
    emoji = vocab.encode("😀".encode())  # four single-byte tokens
    cases = [tok.encode(text) for text in SAMPLES]
    cases += [
        [*accent, *emoji, *accent],
        [*vocab.encode(b"the"), marker],  # ends on a dangling delete marker
        [marker, *vocab.encode(b" cat"), marker, marker, *vocab.encode(b"Hello")],
        [*emoji[:2], tok.eos_token_id, *emoji[2:], tok.bos_token_id, *accent],  # a special cuts a character
        [*vocab.encode(b"Hello"), tok.bos_token_id + 2, marker, tok.eos_token_id, marker],
    ]
    return cases


@pytest.mark.parametrize("skip", [True, False])
def test_streaming_decoder_equals_decode_for_every_split(tok, tiny_vocab, skip):
    for ids in _stream_cases(tok, tiny_vocab):
        whole = tok.decode(ids, skip_special_tokens=skip)
        for a in range(len(ids) + 1):
            for b in range(a, min(len(ids), a + 6) + 1):
                parts, text = _streamed(tok, ids, [a, b], skip)
                assert text == whole, (ids, a, b)
        parts, text = _streamed(tok, ids, list(range(1, len(ids))), skip)  # one id at a time
        assert text == whole
        if "\ufffd" not in whole:
            assert all("\ufffd" not in part and "\x7f" not in part for part in parts)


def test_streaming_on_the_oracle_vocab(oracle, shared_dir):
    text = (shared_dir / "tokenmonster/corpus/english.txt").read_bytes()[:3000].decode("utf-8", "ignore")
    ids = oracle.encode(text + " naïve café. Hello</s>")
    whole = oracle.decode(ids, skip_special_tokens=True)
    for step in (1, 2, 3, 7):
        parts, streamed = _streamed(oracle, ids, list(range(step, len(ids), step)))
        assert streamed == whole


def test_invalid_utf8_text_never_raises(tok):
    raw = b"ok \xff\xfe bad \xe2\x82 cut \xed\xa0\x80 surrogate \x7f\x00 \xc3"
    for text in (raw.decode("utf-8", "surrogateescape"), "lone \ud800 surrogate \udfff", "\udcff"):
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id and all(0 <= i < len(tok) for i in ids)
        assert isinstance(tok.decode(ids), str)
    assert tok.encode(raw.decode("utf-8", "surrogateescape"), add_special_tokens=False) == tok.vocab.encode(raw)


def test_save_and_load_roundtrip(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    out = save_tokenizer(StentorTokenizer.from_vocab(tok.vocab, add_bos_token=False), tmp_path / "tok")
    names = {p.name for p in out.iterdir()}
    assert {
        "tokenizer.vocab",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "tokenization_stentor.py",
        "tokenmonster.py",
    } <= names
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_stentor.StentorTokenizer", None]}
    assert config["add_bos_token"] is False
    loaded = load_tokenizer(out)
    assert isinstance(loaded, StentorTokenizer) and not loaded.add_bos_token and len(loaded) == len(tok)
    for text in SAMPLES:
        assert loaded.encode(text) == tok.encode(text, add_special_tokens=False)
    from transformers import AutoTokenizer

    remote = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    assert type(remote).__module__.startswith("transformers_modules")
    ids = remote.encode(SAMPLES[1] + "</s>")
    assert ids == loaded.encode(SAMPLES[1] + "</s>")
    assert remote.decode(ids) == loaded.decode(ids)
    assert remote.chat_template == CHAT_TEMPLATE


BLOCKED_RUN = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoStentor(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "stentor" or name.startswith("stentor."):
                raise ImportError("stentor is blocked in this test")

    sys.meta_path.insert(0, NoStentor())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    texts = json.loads(sys.argv[2])
    try:
        import stentor
        sys.exit("stentor was importable")
    except ImportError:
        pass
    ids = [tok.encode(t) for t in texts]
    print(json.dumps({"ids": ids, "text": [tok.decode(i) for i in ids], "len": len(tok)}))
    """
)


def run_without_stentor(tok_dir: Path, texts: list[str], tmp_path: Path) -> dict:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules-blocked"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, str(tok_dir), json.dumps(texts)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_saved_tokenizer_loads_where_stentor_is_not_importable(tok, tmp_path):
    out = save_tokenizer(tok, tmp_path / "tok")
    texts = [*SAMPLES, "a</s>b<s>c", "ok \udcff bad"]
    got = run_without_stentor(out, texts, tmp_path)
    assert got["len"] == len(tok)
    assert got["ids"] == [tok.encode(t) for t in texts]
    assert got["text"] == [tok.decode(tok.encode(t)) for t in texts]


def test_load_tokenizer_errors_are_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network retries in tests
    monkeypatch.delenv("STENTOR_VOCAB_DIR", raising=False)
    with pytest.raises(StentorError, match="someone/not-here is not in the local Hugging Face cache.*hf download someone/not-here"):
        load_tokenizer("someone/not-here")
    with pytest.raises(StentorError, match=r"download https://huggingface.co/.*/vocabs/english-4000-strict-v1.vocab"):
        load_tokenizer("english-4000-strict-v1")
    bad = tmp_path / "bad.vocab"
    bad.write_bytes(b"\x01\x01\x01" + b"\0" * 10)
    with pytest.raises(StentorError, match="bad.vocab is not a valid TokenMonster vocabulary"):
        load_tokenizer(bad)
    with pytest.raises(StentorError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.vocab")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StentorError, match="cannot load a tokenizer"):
        load_tokenizer(empty)
