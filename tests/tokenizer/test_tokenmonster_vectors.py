"""The official TokenMonster test vectors (../shared/tokenmonster): every case must match exactly."""

from __future__ import annotations

import base64
import json
import random
import unicodedata
from pathlib import Path

import pytest
from vocab_fuzz import assert_corruptions_rejected_or_clean
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stentor.tokenizer import fast
from stentor.tokenizer.tokenmonster import (
    Vocab,
    VocabError,
    build_vocab_from_yaml,
    go_props,
    go_to_lower,
    go_to_upper,
)

pytestmark = pytest.mark.shared

VOCABS = [
    "english-4000-strict-cap2-oracle", "english-8000-strict-cap1-oracle", "example", "tm_none_cap0_256",
    "tm_none_cap1_unk", "tm_none_cap2_unk", "tm_utf8_cap0_nfd", "tm_utf8_cap0_normall_unk",
    "tm_utf8_cap1_nfd_unk", "tm_utf8_cap2_nfd_unk",
]
BUILDS = [name for name in VOCABS if not name.startswith("english")]


def _cases(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", VOCABS)
def test_vocab_reserializes_byte_identical(tm_dir: Path, name: str) -> None:
    raw = (tm_dir / "vocabs" / f"{name}.vocab").read_bytes()
    assert Vocab.from_bytes(raw, name).to_bytes() == raw


@pytest.mark.parametrize("name", VOCABS)
def test_encode_vectors_python_backend(tm_dir: Path, name: str) -> None:
    vocab = Vocab.load(tm_dir / "vocabs" / f"{name}.vocab")
    vocab.set_backend(None)  # stays on the Python kernels however much it encodes
    for case in _cases(tm_dir / "encode" / f"{name}.jsonl"):
        data = base64.b64decode(case["b64"])
        assert vocab.encode(data) == case["ids"], data[:80]
        if "text" in case:
            assert vocab.encode(case["text"]) == case["ids"]


@pytest.mark.skipif(not fast.available(), reason="numba is not installed")
@pytest.mark.parametrize("name", VOCABS)
def test_encode_vectors_numba_backend(tm_dir: Path, name: str) -> None:
    vocab = Vocab.load(tm_dir / "vocabs" / f"{name}.vocab")
    vocab.set_backend(fast.backend())
    for case in _cases(tm_dir / "encode" / f"{name}.jsonl"):
        assert vocab.encode(base64.b64decode(case["b64"])) == case["ids"]


@pytest.mark.parametrize("name", VOCABS)
def test_decode_vectors(tm_dir: Path, name: str) -> None:
    vocab = Vocab.load(tm_dir / "vocabs" / f"{name}.vocab")
    for case in _cases(tm_dir / "decode" / f"{name}.jsonl"):
        assert vocab.decode(case["ids"]) == base64.b64decode(case["b64"]), case["ids"][:20]


@pytest.mark.parametrize("name", VOCABS)
def test_stream_decoder_matches_decode_at_every_split(tm_dir: Path, name: str) -> None:
    """Intended streaming behaviour: any split, and one id at a time, equals the one-shot decode."""
    vocab = Vocab.load(tm_dir / "vocabs" / f"{name}.vocab")
    cases = [c["ids"] for c in _cases(tm_dir / "decode" / f"{name}.jsonl") if len(c["ids"]) <= 120][:25]
    for ids in cases:
        whole = vocab.decode(ids)
        for cut in range(len(ids) + 1):
            dec = vocab.decoder()
            assert dec.decode(ids[:cut]) + dec.decode(ids[cut:]) + dec.flush() == whole
        dec = vocab.decoder()
        assert b"".join(dec.decode([i]) for i in ids) + dec.flush() == whole


@pytest.mark.parametrize("name", BUILDS)
def test_build_from_yaml_is_byte_exact(tm_dir: Path, name: str) -> None:
    built = build_vocab_from_yaml(tm_dir / "build" / f"{name}.yaml")
    assert built.to_bytes() == (tm_dir / "build" / f"{name}.vocab").read_bytes()


@pytest.mark.parametrize("name", VOCABS)
def test_export_yaml_matches_upstream(tm_dir: Path, name: str) -> None:
    vocab = Vocab.load(tm_dir / "vocabs" / f"{name}.vocab")
    assert vocab.export_yaml() == (tm_dir / "vocabs" / f"{name}.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["tm_utf8_cap2_nfd_unk", "tm_none_cap0_256", "example"])
def test_export_then_rebuild_keeps_tokens_and_ids(tm_dir: Path, name: str) -> None:
    """Re-importing an export keeps every visible token with its id (the reserve byte, deleted
    list and merged duplicates are not exported upstream either)."""
    vocab = Vocab.load(tm_dir / "vocabs" / f"{name}.vocab")
    again = build_vocab_from_yaml(vocab.export_yaml())
    assert {(t.id, t.token, t.type) for t in again.tokens()} >= {(t.id, t.token, t.type) for t in vocab.tokens()}


def test_unicode_rules_match_go_table(tm_dir: Path) -> None:
    """Go's predicates and simple case maps, from the table the Go program wrote, for every code point."""
    table = {}
    for line in (tm_dir / "unicode" / "go_unicode13_table.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        cp, props, low, up = line.split("\t")
        table[int(cp, 16)] = (props, int(low, 16), int(up, 16))
    letters = {"L": 1, "U": 2, "l": 4, "N": 8, "M": 16, "S": 32}
    mismatches = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        props, low, up = table.get(cp, ("", cp, cp))
        want = sum(bit for ch, bit in letters.items() if ch in props)
        if (go_props(cp) & 63, go_to_lower(cp), go_to_upper(cp)) != (want, low, up):
            mismatches.append(hex(cp))
    assert not mismatches, mismatches[:20]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, sample", [("example", 0), ("tm_none_cap2_unk", 200),
                                          ("english-8000-strict-cap1-oracle", 40)])
def test_real_vocab_truncations_are_rejected(tm_dir: Path, name: str, sample: int) -> None:
    """Every truncation of the small file; for the larger ones the header, the tail and a random
    sample (a late cut parses the whole file before failing, so those are kept few)."""
    raw = (tm_dir / "vocabs" / f"{name}.vocab").read_bytes()
    cuts = range(len(raw)) if not sample else [
        *range(0, 300), *range(len(raw) - sample, len(raw)), *random.Random(7).sample(range(len(raw)), sample)]
    for cut in cuts:
        with pytest.raises(VocabError, match=rf"{name}.vocab: .*\(file is {cut} bytes\)"):
            Vocab.from_bytes(raw[:cut], name=f"{name}.vocab")


@pytest.mark.timeout(120)
def test_real_vocab_corruptions_raise_vocab_error_or_load_cleanly(tm_dir: Path) -> None:
    raw = (tm_dir / "vocabs" / "tm_utf8_cap2_nfd_unk.vocab").read_bytes()
    assert_corruptions_rejected_or_clean(raw, seed=99, rounds=150, max_flips=3, text="Hello, WORLD! 42 naïve")


_PRINTABLE = st.text(st.sampled_from([chr(c) for c in range(32, 127)] + ["\t", "\n", "\r"]), max_size=300)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(data=st.binary(max_size=300))
def test_none_cap0_256_round_trips_any_bytes(tm_dir: Path, data: bytes) -> None:
    vocab = _cached_vocab(tm_dir, "tm_none_cap0_256")
    assert vocab.decode(vocab.encode(data)) == data


@_SETTINGS
@given(text=st.text(st.characters(blacklist_categories=["Cs", "Cc"]) | st.sampled_from("\t\n\r"), max_size=200))
def test_utf8_cap0_nfd_round_trips_to_nfd(tm_dir: Path, text: str) -> None:
    """It has every byte valid UTF-8 needs but no control bytes besides tab/LF/CR and no UNK, so
    normalized = NFD(text) for text without other control characters."""
    vocab = _cached_vocab(tm_dir, "tm_utf8_cap0_nfd")
    assert vocab.decode(vocab.encode(text)) == unicodedata.normalize("NFD", text).encode()


@_SETTINGS
@given(text=_PRINTABLE)
@pytest.mark.parametrize("name", ["english-4000-strict-cap2-oracle", "english-8000-strict-cap1-oracle"])
def test_trained_vocabs_round_trip_printable_ascii(tm_dir: Path, name: str, text: str) -> None:
    """Printable ASCII plus tab/LF/CR is covered by both trained vocabularies: the identity."""
    vocab = _cached_vocab(tm_dir, name)
    assert vocab.decode(vocab.encode(text)) == text.encode()


_VOCAB_CACHE: dict[str, Vocab] = {}


def _cached_vocab(tm_dir: Path, name: str) -> Vocab:
    if name not in _VOCAB_CACHE:
        _VOCAB_CACHE[name] = Vocab.load(tm_dir / "vocabs" / f"{name}.vocab")
    return _VOCAB_CACHE[name]
