"""Core TokenMonster behaviour on small vocabularies built from inline YAML (no shared data needed)."""

from __future__ import annotations

import pickle
import unicodedata
from pathlib import Path

import pytest
from vocab_fuzz import assert_corruptions_rejected_or_clean
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stentor.tokenizer import encode_batch, fast, load_vocab
from stentor.tokenizer.tokenmonster import (
    P_UPPER,
    Vocab,
    VocabError,
    build_vocab_from_yaml,
    go_props,
    go_to_lower,
    go_to_upper,
    parse_vocab_yaml,
)

WORDS = ["the", "and", "ing", "Hello", "world", "token", "tion", "er", "in", "on", "at", "re", "st", "is", "it",
         "12", "2023", "'s", "--", "...", "\\n\\n", "é", "naïve", "café", "Straße", "ΑΒΓ", "日本"]


def _yaml(header: str, extra: str = "") -> str:
    lines = [header.strip(), "tokens:"]
    for w in WORDS:
        lines += [f'  - token: "{w}"', f'  - token: " {w}"']
    return "\n".join(lines) + "\n" + extra


CAP2 = _yaml("""
charset: utf-8
capcode: 2
normalization: "nfd"
include-256-bytes: true
""", 'special:\n  - token: "<eos>"\n    id: 900\n')
CAP1 = _yaml("""
charset: utf-8
capcode: 1
normalization: nfd
include-256-bytes: true
""")
CAP0 = _yaml("""
charset: none
capcode: 0
normalization: none
include-256-bytes: true
""")
CAP2_UNK = _yaml("""
charset: utf-8
capcode: 2
normalization: nfd
include-ascii-bytes: true
unk: true
""", 'special:\n  - token: "<|endoftext|>"\n')

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _python(vocab: Vocab) -> Vocab:
    """The reference: pinned to the Python kernels (a Vocab would attach numba's after 64 KiB of text)."""
    vocab.set_backend(None)
    return vocab


@pytest.fixture(scope="module")
def cap2() -> Vocab:
    return _python(build_vocab_from_yaml(CAP2))


@pytest.fixture(scope="module")
def cap1() -> Vocab:
    return _python(build_vocab_from_yaml(CAP1))


@pytest.fixture(scope="module")
def cap0() -> Vocab:
    return _python(build_vocab_from_yaml(CAP0))


@pytest.fixture(scope="module")
def cap2_unk() -> Vocab:
    return _python(build_vocab_from_yaml(CAP2_UNK))


def _nfd(data: bytes) -> str:
    return unicodedata.normalize("NFD", data.decode("utf-8", "surrogateescape"))


def _case_roundtrip(s: str) -> str:
    """What capcode 2 gives back: uppercase letters go through Go's simple lower then upper map."""
    return "".join(chr(go_to_upper(go_to_lower(ord(c)))) if go_props(ord(c)) & P_UPPER else c for c in s)


# -- round trips: decode(encode(x)) == normalized(x) on vocabularies that cover every byte


@SETTINGS
@given(st.binary(max_size=300))
def test_cap0_bytes_round_trip_exactly(cap0: Vocab, data: bytes) -> None:
    """charset none, capcode 0, no normalization, all 256 bytes: the identity."""
    assert cap0.decode(cap0.encode(data)) == data


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_cap1_round_trip_is_nfd_with_del_replaced(cap1: Vocab, data: bytes) -> None:
    """normalized = NFD of every valid UTF-8 run (invalid bytes kept), then 0x7F -> 0x14 (capcode 1 is lossy there)."""
    expected = _nfd(data).encode("utf-8", "surrogateescape").replace(b"\x7f", b"\x14")
    assert cap1.decode(cap1.encode(data)) == expected


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_cap2_round_trip_is_nfd_with_case_roundtrip(cap2: Vocab, data: bytes) -> None:
    """normalized = NFD, then every uppercase letter U -> upper(lower(U)) with Go's simple maps
    (e.g. U+0130 -> I, Kelvin sign -> K); everything else, invalid bytes included, unchanged."""
    expected = _case_roundtrip(_nfd(data)).encode("utf-8", "surrogateescape")
    assert cap2.decode(cap2.encode(data)) == expected


def test_encode_rejects_non_text(cap2: Vocab) -> None:
    with pytest.raises(TypeError):
        cap2.encode(5)  # type: ignore[arg-type]


@SETTINGS
@given(st.text(max_size=200))
def test_str_and_utf8_bytes_encode_alike(cap2: Vocab, text: str) -> None:
    assert cap2.encode(text) == cap2.encode(text.encode("utf-8", "surrogatepass"))


# -- the numba backend runs the same kernels


@pytest.mark.skipif(not fast.available(), reason="numba is not installed")
@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_numba_backend_gives_identical_ids(cap2: Vocab, cap1: Vocab, cap2_unk: Vocab, data: str | bytes) -> None:
    for vocab in (cap2, cap1, cap2_unk):
        compiled = Vocab.from_bytes(vocab.to_bytes())
        compiled.set_backend(fast.backend())
        assert compiled.encode(data) == vocab.encode(data)


@pytest.mark.skipif(not fast.available(), reason="numba is not installed")
@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=80)), max_size=12))
def test_a_batch_encodes_as_its_texts_one_by_one(cap2: Vocab, cap1: Vocab, cap0: Vocab, texts: list) -> None:
    """encode_many (one compiled call, code-point tables shared by the batch) gives each text its own ids."""
    for vocab in (cap2, cap1, cap0):
        compiled = Vocab.from_bytes(vocab.to_bytes())
        compiled.set_backend(fast.backend())
        assert compiled.encode_many(texts) == [vocab.encode(t) for t in texts]
        assert vocab.encode_many(texts) == [vocab.encode(t) for t in texts]  # the Python backend: one at a time


@pytest.mark.parametrize("text", ["\u023a\u023a\u023aa" * 50, "A1B1C1d" * 80, "A'B'C'd" * 60, "HTTPServer " * 40,
                                  "\u1f88\u1f88\u0345b" * 30, "ǅǄǆ ΣΑΣ" * 30, "\x7f\x7fA" * 40])
def test_worst_case_capcode_growth(cap2: Vocab, cap1: Vocab, text: str) -> None:
    """Inputs that grow most under capcode (markers plus lowercase forms longer than the
    uppercase ones) stay within the kernels' output buffers on both backends."""
    for vocab in (cap2, cap1):
        ids = vocab.encode(text)
        if fast.available():
            compiled = Vocab.from_bytes(vocab.to_bytes())
            compiled.set_backend(fast.backend())
            assert compiled.encode(text) == ids
            assert compiled.encode_many([text, "", text[::-1]]) == [ids, [], vocab.encode(text[::-1])]


# -- streaming decoder


@SETTINGS
@given(st.text(max_size=60), st.data())
def test_stream_decoder_equals_decode_for_every_split(cap2_unk: Vocab, text: str, data: st.DataObject) -> None:
    ids = cap2_unk.encode(text)
    ids += data.draw(st.lists(st.sampled_from(sorted({t.id for t in cap2_unk.tokens()})), max_size=20))
    whole = cap2_unk.decode(ids)
    for cut in range(len(ids) + 1):
        dec = cap2_unk.decoder()
        assert dec.decode(ids[:cut]) + dec.decode(ids[cut:]) + dec.flush() == whole


def test_stream_decoder_holds_back_partial_characters(cap0: Vocab) -> None:
    ids = cap0.encode("a€b".encode())
    dec = cap0.decoder()
    chunks = [dec.decode([i]) for i in ids]
    assert b"".join(chunks) + dec.flush() == "a€b".encode()
    for chunk in chunks:
        chunk.decode("utf-8")  # never half a character


def test_stream_decoder_carries_capcode_markers(cap2: Vocab) -> None:
    ids = cap2.encode("Hello WORLD ABc")
    dec = cap2.decoder()
    assert b"".join(dec.decode([i]) for i in ids) + dec.flush() == b"Hello WORLD ABc"


# -- building


def test_build_assigns_ids_variants_and_unk(cap2_unk: Vocab) -> None:
    hello = cap2_unk.encode("Hello")
    assert cap2_unk.decode(hello) == b"Hello"
    ids = {t.token: t.id for t in cap2_unk.tokens()}
    assert ids[b"DC hello"] == cap2_unk.encode_prepared(b"DC hello")[0]
    # the variant "D " + token shares its base token's id and is what the id decodes to
    assert cap2_unk.id_to_token(ids[b"D the"]) == b"D the"
    assert cap2_unk.unk_id == len([t for t in cap2_unk.tokens() if t.type != 3])
    assert cap2_unk.special_ids == [ids[b"<|D endoftext|>"]]
    assert cap2_unk.delete_token_id == ids[b"D"]
    assert cap2_unk.encode("€") == [cap2_unk.unk_id] * 3
    assert cap2_unk.vocab_size == len(cap2_unk.tokens())


def test_yaml_pins_specials_hex_and_delete() -> None:
    vocab = build_vocab_from_yaml("""
charset: utf-8   # comment
capcode: 0
normalization: ''
tokens:
  - token: "TokenMonsterHexEncode{ff00}"
    id: 7
  - token: 'it''s'
    score: 0.5
  - token: "tab\\there\\u00e9\\x41"
  - token: " gone"
special:
  - token: "<s>"
    id: 3
delete:
  - token: " gone"
""")
    tokens = {t.token: t for t in vocab.tokens()}
    assert tokens[b"\xff\x00"].id == 7
    assert tokens[b"it's"].score == pytest.approx(0.5)
    assert "tab\there\u00e9A".encode() in tokens
    assert b" gone" not in tokens
    assert tokens[b"<s>"].type == 2 and tokens[b"<s>"].id == 3
    assert vocab.normalization == 0 and vocab.normalization_name == "None"


def test_yaml_dict_input_and_normalization_names() -> None:
    vocab = build_vocab_from_yaml({"charset": "utf8", "capcode": 1, "normalization": "NFD Collapse trim",
                                   "tokens": [{"token": "ab"}]})
    assert vocab.normalization == 1 | 16 | 32
    assert vocab.normalization_name == "NFD Collapse Trim"
    assert vocab.charset == 1 and vocab.capcode == 1 and vocab.mode == 5


@pytest.mark.parametrize("text, message", [
    ("capcode: 3\n", "capcode"),
    ("normalization: shout\n", "normalization"),
    ('tokens:\n  - token: "unterminated\n', "unterminated"),
    ('tokens:\n  - token: "\\q"\n', "escape"),
    ("tokens:\n\t- token: x\n", "tab"),
    ("unk: maybe\n", "unk"),
    ("  - token: x\n", "outside"),
    ('special:\n  - token: "<' + "x" * 40 + '>"\n', "more than 40"),
    ("tokens:\n  - token: ab\n    id: 16777214\n", "outside 0..16777213"),
])
def test_bad_yaml_raises_vocab_error(text: str, message: str) -> None:
    with pytest.raises(VocabError, match=message):
        build_vocab_from_yaml(text)


def test_missing_yaml_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(VocabError, match="nope.yaml: no such YAML file"):
        build_vocab_from_yaml(str(tmp_path / "nope.yaml"))


def test_parse_vocab_yaml_subset() -> None:
    parsed = parse_vocab_yaml('a: 1\nb: "x # not a comment"  # comment\nc: 2.5\nd: yes\nl:\n  - token: "t"\n    id: 4\n')
    assert parsed == {"a": 1, "b": "x # not a comment", "c": 2.5, "d": True, "l": [{"token": "t", "id": 4}]}


def test_export_yaml_rebuilds_same_file(cap2_unk: Vocab) -> None:
    again = build_vocab_from_yaml(cap2_unk.export_yaml())
    assert again.to_bytes()[24:] == cap2_unk.to_bytes()[24:]


# -- loading, saving and rejecting bad files


def test_save_is_atomic_and_round_trips(tmp_path: Path, cap2: Vocab) -> None:
    target = tmp_path / "v.vocab"
    target.write_bytes(b"old")
    cap2.save(target)
    assert target.read_bytes() == cap2.to_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["v.vocab"]
    assert load_vocab(target).encode("Hello there") == cap2.encode("Hello there")


@pytest.mark.timeout(60)
def test_every_truncation_is_rejected(cap2_unk: Vocab) -> None:
    raw = cap2_unk.to_bytes()
    step = max(1, len(raw) // 1500)
    for cut in [*range(0, 64), *range(64, len(raw), step), *range(len(raw) - 300, len(raw))]:
        with pytest.raises(VocabError, match=r"<bytes>:.*\(file is \d+ bytes\)"):
            Vocab.from_bytes(raw[:cut])


@pytest.mark.timeout(60)
def test_random_corruptions_raise_vocab_error_or_load_cleanly(cap2_unk: Vocab) -> None:
    assert_corruptions_rejected_or_clean(
        cap2_unk.to_bytes(), seed=1234, rounds=1500, max_flips=4, text="Hello, world! 123 é"
    )


@pytest.mark.parametrize("patch, message", [
    ({0: 3}, "capcode"),
    ({1: 9}, "charset"),
    ({23: 0}, "max token length"),
    ({24: 0}, "length 0"),
    ({24: 41}, "length 41"),
    ({17: 0xFF, 18: 0xFF, 19: 0x7F}, "more than the file can hold"),
])
def test_specific_corruptions(cap0: Vocab, patch: dict[int, int], message: str) -> None:
    data = bytearray(cap0.to_bytes())
    for off, value in patch.items():
        data[off] = value
    with pytest.raises(VocabError, match=message):
        Vocab.from_bytes(bytes(data), name="x.vocab")


def test_trailing_bytes_and_missing_file(tmp_path: Path, cap0: Vocab) -> None:
    with pytest.raises(VocabError, match="trailing"):
        Vocab.from_bytes(cap0.to_bytes() + b"\0")
    with pytest.raises(VocabError, match="nope.vocab"):
        Vocab.load(tmp_path / "nope.vocab")


def test_bad_alternative_index_is_rejected(cap2: Vocab) -> None:
    raw = bytearray(cap2.to_bytes())
    length = raw[24]
    alt1 = 24 + 1 + length + 2
    raw[alt1: alt1 + 3] = (5).to_bytes(3, "little")
    with pytest.raises(VocabError, match="alternative"):
        Vocab.from_bytes(bytes(raw))


# -- accessors and batch encoding


def test_pickle_drops_the_backend(cap2: Vocab) -> None:
    clone = pickle.loads(pickle.dumps(cap2))
    assert clone.backend.uses_arrays is False
    assert clone.encode("Hello WORLD") == cap2.encode("Hello WORLD")


def test_accessors(cap2_unk: Vocab) -> None:
    assert cap2_unk.capcode == 2 and cap2_unk.charset == 1 and cap2_unk.normalization == 1
    assert cap2_unk.max_token_length == max(len(t.token) for t in cap2_unk.tokens())
    assert cap2_unk.id_table_size == max(t.id for t in cap2_unk.tokens()) + 1
    assert cap2_unk.id_to_token(cap2_unk.unk_id) is None
    kinds = {t.type for t in cap2_unk.tokens()}
    assert kinds == {0, 1, 2, 3}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_encode_batch_matches_serial(tmp_path: Path, cap2: Vocab) -> None:
    texts = [f"Sample {i}: Hello WORLD, naïve café {i * 7}" for i in range(40)]
    path = tmp_path / "v.vocab"
    cap2.save(path)
    serial = [cap2.encode(t) for t in texts]
    assert encode_batch(path, texts, num_workers=2) == serial
    assert encode_batch(cap2, texts, num_workers=1) == serial


@pytest.mark.skipif(not fast.available(), reason="numba is not installed")
def test_a_vocab_attaches_the_numba_kernels_once_it_has_encoded_enough_text(cap1: Vocab) -> None:
    """A Vocab built directly starts on Python (short texts never pay numba's import) and switches after
    AUTO_FAST_BYTES, with the same ids; a backend set explicitly is kept."""
    from stentor.tokenizer.tokenmonster import AUTO_FAST_BYTES, PYTHON_BACKEND

    auto = Vocab.from_bytes(cap1.to_bytes())
    text = " ".join(WORDS) + " Once upon a time. "
    assert auto.encode(text) == cap1.encode(text)
    assert auto.backend is PYTHON_BACKEND
    corpus = text * (AUTO_FAST_BYTES // len(text.encode()) + 1)
    assert auto.encode(corpus) == cap1.encode(corpus)
    assert auto.backend is fast.backend()
    assert auto.encode_many([text, corpus]) == [cap1.encode(text), cap1.encode(corpus)]
    assert cap1.backend is PYTHON_BACKEND  # pinned by set_backend(None), after all the text above
    assert pickle.loads(pickle.dumps(auto)).backend is PYTHON_BACKEND  # a copy starts over on Python
