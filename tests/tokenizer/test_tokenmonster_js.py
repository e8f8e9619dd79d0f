"""The JavaScript TokenMonster (src/stentor/infer/web/tokenmonster.js) against the Python reference.

Every comparison is exact: ids, bytes, text, per stream chunk, and the error message of a rejected
file. One node process (tm_node.mjs) answers all the cases of a vocabulary at once.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import pytest

from stentor.tokenizer.codec import TextCodec
from stentor.tokenizer.jstables import unicode_tables, unicode_tables_json
from stentor.tokenizer.tokenmonster import Vocab, VocabError, build_vocab_from_yaml

DRIVER = Path(__file__).with_name("tm_node.mjs")
NODE_HINT = "node is not installed: the JavaScript tokenizer tests need Node.js 20+ (apt-get install nodejs, or nodejs.org)"


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(NODE_HINT)
        pytest.skip(NODE_HINT)
    return path


@pytest.fixture(scope="session")
def tables(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("jstables") / "unicode_tables.json"
    path.write_text(unicode_tables_json(), encoding="utf-8")
    return path


class JsRun:
    """One node process working on one request while the test computes Python's answers beside it."""

    def __init__(self, node: str, request: dict) -> None:
        with tempfile.TemporaryFile("w+", encoding="utf-8") as fh:
            json.dump(request, fh)
            fh.seek(0)
            self._proc = subprocess.Popen([node, str(DRIVER)], stdin=fh, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        self._out: tuple[str, str] | None = None

    def _wait(self) -> tuple[str, str]:
        if self._out is None:
            self._out = self._proc.communicate(timeout=120)
        return self._out

    def result(self) -> dict:
        out, err = self._wait()
        assert self._proc.returncode == 0, err[-2000:]
        return json.loads(out)

    def error(self) -> str:
        """The error line of a run expected to fail."""
        _, err = self._wait()
        assert self._proc.returncode != 0
        return next((line for line in err.splitlines() if line.startswith("Error: ")), err)


def run_js(node: str, request: dict) -> dict:
    return JsRun(node, request).result()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- vocabularies built here ------------------------------------------------------------------------

WORDS = ["the", "and", "ing", "Hello", "world", "token", "tion", "er", "in", "on", "at", "re", "st", "is", "it",
         "12", "2023", "'s", "’s", "--", "...", "\\n\\n", "\\r\\n", "  ", "é", "naïve", "café", "Straße", "über",
         "ΑΒΓ", "λόγος", "ος", "Привет", "мир", "日本", "語", "東京", "🙂", "İstanbul", "ı", "don't", "it's",
         "HTTP", "Server", "camel", "Case", "C", "W", "D", "x", "“", "”", "quote", "σ", "ς", "Σ"]
# Only with a leading space: glued to a word before them ("therunning"), the tokenizer's
# delete-token branch can take " running" and a delete marker.
SPACED = ["running", "people", "example", "because", "between", "another", "language", "tokens"]
# For the UTF-16 vocabulary, whose space node is " \x00" (UTF-16LE space), the same words after it.
UTF16 = [b" \x00" + w.encode() for w in SPACED]


def _yaml(header: str, extra: str = "") -> str:
    lines = [header.strip(), "tokens:"]
    for w in WORDS:
        lines += [f'  - token: "{w}"', f'  - token: " {w}"']
    lines += [f'  - token: " {w}"' for w in SPACED]
    # as encoded, so capcode puts no marker in front: lowercase letters then begin tokens
    lines += [f'  - token: "{c}{v}"\n    encoded: true' for c in "abcdefghijklmnopqrstuvwxyz" for v in "aeiou"]
    if "utf-16" in header:
        lines += [f'  - token: "TokenMonsterHexEncode{{{t.hex()}}}"\n    encoded: true' for t in UTF16]
    return "\n".join(lines) + "\n" + extra


EOS = 'special:\n  - token: "<eos>"\n'
CONFIGS = {
    "utf8_cap2_nfd": _yaml("charset: utf-8\ncapcode: 2\nnormalization: nfd\ninclude-256-bytes: true", EOS),
    "utf8_cap1_nfd_unk": _yaml("charset: utf-8\ncapcode: 1\nnormalization: nfd\ninclude-ascii-bytes: true\nunk: true"),
    "none_cap0": _yaml("charset: none\ncapcode: 0\nnormalization: none\ninclude-256-bytes: true"),
    "utf8_cap2_all_unk": _yaml('charset: utf-8\ncapcode: 2\nnormalization: "nfd lowercase accents quotemarks '
                               'collapse trim leadingspace unixlines"\ninclude-ascii-bytes: true\nunk: true', EOS),
    "utf8_cap0_lower": _yaml('charset: utf-8\ncapcode: 0\nnormalization: "lowercase unixlines"\n'
                             "include-utf8-bytes: true"),
    "utf8_cap1_quotes_trim": _yaml('charset: utf-8\ncapcode: 1\nnormalization: "nfd quotemarks collapse trim"\n'
                                   "include-256-bytes: true"),
    "utf8_cap0_lead_accents": _yaml('charset: utf-8\ncapcode: 0\nnormalization: "leadingspace collapse accents"\n'
                                    "include-256-bytes: true\nunk: true"),
    "none_cap2_unk": _yaml("charset: none\ncapcode: 2\nnormalization: none\ninclude-ascii-bytes: true\nunk: true"),
    "utf16_cap1": _yaml("charset: utf-16\ncapcode: 1\nnormalization: nfd\ninclude-256-bytes: true"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Vocab, Path]]:
    out = tmp_path_factory.mktemp("jsvocabs")
    vocabs = {}
    for name, source in CONFIGS.items():
        vocab = build_vocab_from_yaml(source)
        vocab.save(out / f"{name}.vocab")
        vocabs[name] = (vocab, out / f"{name}.vocab")
    return vocabs


# -- inputs ---------------------------------------------------------------------------------------

POOLS = {
    "english": ["the", "and", "Hello", "world", "token", "tokenizer", "running", "The", "HELLO", "World", "a", "I",
                "don't", "it's", "John's", "O'Neil", "rock'n'roll", "USA", "NASA", "iPhone", "McDonald", "camelCase",
                "XMLHttpRequest", "HTTPServer", "ABCdef", "aBC", "Cat", "CAT", "cAT", "C", "W", "D", "CD", "DC",
                "WORLD's", "isn’t", "TOKEN’S", "x", "Z", "therunning", "bigexample", "xbecause", "HELLOpeople",
                "inbetween", "yetAnother", "thelanguage", "Runningpeople"],
    "number": ["0", "12", "2023", "3.14", "1,000,000", "42nd", "1e10", "0x7F", "½", "²", "٣", "Ⅻ", "٤٥", "७"],
    "punct": [".", ",", "!", "?", "...", "--", "—", "–", "(", ")", "[", "]", "{", "}", '"', "'", "’", "‘", "“",
              "”", "«", "»", "#", "@", "&", "*", "/", "\\", "|", "~", "`", "^", "_", "%", "$", "€", "£", "'s", "’s"],
    "latin": ["é", "É", "àéîõü", "Ångström", "Çà", "ñÑ", "ÿŸ", "Łódź", "Dvořák", "Ærøskøbing", "œuvre", "ǅ",
              "ǈ", "ǲ", "Straße", "ẞ", "ß", "ﬁ", "naïve", "NAÏVE", "CAFÉ", "e\u0301", "A\u030a", "o\u0308\u0304",
              "Ω", "Å", "K", "ǰ", "ŉ", "Ǆ", "Ⱥ", "ȿ", "ɐ", "ʰ"],
    "greek": ["ΟΔΟΣ", "Σ", "σ", "ς", "λόγος", "ΛΌΓΟΣ", "ΣΊΣΥΦΟΣ", "Σα", "ὈΔΥΣΣΕΎΣ", "ΐ", "ᾼ", "ΆΣ'", "Σ.",
              "AΣ\u0301", "ΣΣ", "aΣ\u00ad", "aΣ'b", "1Σ", "ᾈ", "ΰ", "ϓ", "Ϊ́"],
    "cyrillic": ["Привет", "МИР", "ёЁ", "Ѝ", "щука", "ЖЖ", "Ёлка", "МОСКВА", "й"],
    "cjk": ["日本語", "中文", "東京", "한국어", "漢字", "ｶﾀｶﾅ", "ＡＢＣ", "가각", "ㄱ", "𠀀", "〜"],
    "emoji": ["🙂", "👍🏽", "👨\u200d👩\u200d👧", "🇩🇪", "❤️", "🚀", "🤖", "©", "™"],
    "turkish": ["İstanbul", "ıi", "İ", "I\u0307", "İİ", "DİYARBAKIR", "ısı", "İi"],
    "other": ["مرحبا", "שָׁלוֹם", "नमस्ते", "ภาษาไทย", "Ⴀ", "Ꭰ", "ꭰ", "\u2c2f", "\u2c5f", "𐐀𐐨", "𞤀", "\U00010570",
              "\u0870", "\U0001e290", "ᏸ", "ǅa", "Ꞵ", "ꞵ", "\u1e9e"],
    "control": ["\x00", "\x7f", "\x14", "\x1b", "\u200b", "\u00ad", "\u2028", "\u00a0", "\u3000", "\ufeff",
                "\ufffd", "\U0010ffff", "\U000e0001", "\u0345", "\u034f"],
    "space": [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", " \n "],
}
MARKS = [0x300, 0x301, 0x308, 0x316, 0x323, 0x327, 0x334, 0x345, 0x35C, 0x360, 0x591, 0x5B0, 0x5BC, 0x64B, 0x93C,
         0x1DCE, 0x20D2, 0x302A, 0x1D165]
BAD_BYTES = [b"\x80", b"\xbf", b"\xc3", b"\xe2\x80", b"\xf0\x9f\x99", b"\xff", b"\xfe", b"\xed\xa0\x80",
             b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe0\x80\x80", b"\xe2\x80\x9c"[:2], b"\xcc"]
SEPARATORS = ["", " ", " ", " ", "  ", "\n", "\r\n", "\t", "-", "'", "’", ", ", ". "]


def _case(rng: random.Random, s: str) -> str:
    pick = rng.random()
    if pick < 0.5:
        return s
    if pick < 0.6:
        return s.upper()
    if pick < 0.7:
        return s.lower()
    if pick < 0.8:
        return s.title()
    if pick < 0.85:
        return s.swapcase()
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in s)


def _piece(rng: random.Random) -> str:
    pool = rng.choice(list(POOLS))
    s = _case(rng, rng.choice(POOLS[pool]))
    if rng.random() < 0.1:  # combining marks in random order: canonical reordering
        s += "".join(chr(rng.choice(MARKS)) for _ in range(rng.randint(1, 5)))
    return s


def make_inputs(seed: int = 20240611, count: int = 1800) -> list[bytes]:
    """Deterministic mixed inputs, some with invalid UTF-8; the empty string and each pool entry alone first."""
    rng = random.Random(seed)
    fixed = [""] + [s for pool in POOLS.values() for s in pool]
    out = [s.encode() for s in fixed] + BAD_BYTES
    for _ in range(count):
        parts = [_piece(rng) for _ in range(rng.randint(1, 12))]
        text = "".join(p + rng.choice(SEPARATORS) for p in parts)
        data = text.encode("utf-8")
        if rng.random() < 0.12:
            cut = rng.randrange(len(data) + 1)
            bad = rng.choice(BAD_BYTES) if rng.random() < 0.7 else bytes(rng.randrange(256) for _ in range(3))
            data = data[:cut] + bad + data[cut:]
        out.append(data)
    return out


INPUTS = make_inputs()


def _decode_cases(vocab: Vocab, rng: random.Random, count: int) -> list[list[int]]:
    """Random id lists: known ids (markers often), UNK, unknown and negative ids."""
    info = vocab.tokens()
    ids = sorted({t.id for t in info})
    markers = [t.id for t in info if t.token in (b"C", b"W", b"D", b" ", b"\x7f")]
    extra = [vocab.id_table_size, vocab.id_table_size + 7, -1]
    cases = []
    for _ in range(count):
        case = []
        for _ in range(rng.randint(0, 30)):
            r = rng.random()
            case.append(rng.choice(markers) if r < 0.25 and markers else rng.choice(extra) if r < 0.3
                        else rng.choice(ids))
        cases.append(case)
    return cases


def _chunks(rng: random.Random, ids: list[int]) -> list[list[int]]:
    cuts = sorted(rng.sample(range(len(ids) + 1), min(len(ids) + 1, rng.randint(0, 6))))
    bounds = [0, *cuts, len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:])]


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _py_stream(vocab: Vocab, chunks: list[list[int]]) -> list[str]:
    dec = vocab.decoder()
    return [b64(dec.decode(c)) for c in chunks] + [b64(dec.flush())]


# -- the core suite (no shared data) ------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_built_vocab_matches_python(node: str, tables: Path, built: dict, name: str) -> None:
    vocab, path = built[name]
    rng = random.Random(name)
    texts = [d.decode() for d in INPUTS[:400] if _valid(d)]
    decodes = _decode_cases(vocab, rng, 300) + [vocab.encode(d) for d in INPUTS[:300]]
    streams = [_chunks(rng, ids) for ids in decodes[::3]]
    js = JsRun(node, {"vocab": str(path), "tables": str(tables), "encode": [b64(d) for d in INPUTS],
                      "encode_text": texts, "prepare": [b64(d) for d in INPUTS[:300]],
                      "decode": decodes, "stream": streams})
    encoded = [vocab.encode(d) for d in INPUTS]
    got = js.result()
    for data, want, ids in zip(INPUTS, encoded, got["encode"]):
        assert ids == want, data
    for text, ids in zip(texts, got["encode_text"]):
        assert ids == vocab.encode(text), text
    for data, out in zip(INPUTS, got["prepare"]):
        assert out == b64(vocab.prepare(data)), data
    for ids, out in zip(decodes, got["decode"]):
        assert out == b64(vocab.decode(ids)), ids
    for chunks, out in zip(streams, got["stream"]):
        assert out == _py_stream(vocab, chunks), chunks


def test_lone_surrogates_encode_as_python_str(node: str, tables: Path, built: dict) -> None:
    """A JS string with lone surrogates encodes like the Python str (errors="surrogatepass"). (A Python str
    holding a high and a low surrogate side by side has no JS equivalent: JSON makes them one character.)"""
    vocab, path = built["utf8_cap2_nfd"]
    texts = ["\ud800", "a\udc80b", "\udfff\ud83d", "x\ud83dy\ude00", "\ude00\ud83d"]
    got = run_js(node, {"vocab": str(path), "tables": str(tables), "encode_text": texts})
    assert got["encode_text"] == [vocab.encode(t) for t in texts]


@functools.lru_cache(maxsize=2)
def _all_code_points(assigned_only: bool) -> str:
    cats = ("Cn", "Co", "Cs") if assigned_only else ("Cs",)
    return "".join(chr(cp) for cp in range(0x80, 0x110000) if unicodedata.category(chr(cp)) not in cats)


@pytest.mark.timeout(300)
def test_normalization_of_every_code_point(node: str, tables: Path, tmp_path: Path) -> None:
    """NFD, mark stripping and lowercasing agree with Python on every code point, final sigma included."""
    every = _all_code_points(assigned_only=False).encode()
    assigned = _all_code_points(assigned_only=True)
    # Σ after each character, preceded by "a" (cased) and by "1" (neither cased nor case-ignorable),
    # which tells both properties apart; Σ before a sample of them, for the look-ahead
    sigma = "1".join(f"a{c}Σ1{c}Σ" for c in assigned) + "1".join(f"aΣ{c}a1aΣ{c}" for c in assigned[::50])
    sigma = sigma.encode()
    for norm in ("nfd", "lowercase", "accents lowercase"):
        vocab = build_vocab_from_yaml(f'charset: utf-8\ncapcode: 0\nnormalization: "{norm}"\n'
                                      "include-256-bytes: true\n")
        path = tmp_path / "norm.vocab"
        vocab.save(path)
        cases = [every, sigma] if norm == "lowercase" else [every]
        js = JsRun(node, {"vocab": str(path), "tables": str(tables), "prepare": [b64(c) for c in cases]})
        wants = [vocab.prepare(case) for case in cases]
        for want, out in zip(wants, js.result()["prepare"]):
            if out != b64(want):
                js = base64.b64decode(out)
                at = next((k for k in range(min(len(js), len(want))) if js[k] != want[k]), min(len(js), len(want)))
                pytest.fail(f"{norm}: JS differs from Python at byte {at}: {js[at - 12:at + 12]!r} != "
                            f"{want[at - 12:at + 12]!r}")


@pytest.mark.timeout(300)
def test_capcode_of_every_assigned_code_point(node: str, tables: Path, built: dict) -> None:
    """Go's props and simple case maps through capcode 2 (which reads every prop bit capcode 1 does),
    encoding and decoding, for every assigned character and a sample of unassigned ones."""
    assigned = _all_code_points(assigned_only=True)
    unassigned = [cp for cp in range(0x80, 0x110000, 7) if unicodedata.category(chr(cp)) == "Cn"]
    text = (assigned + "".join(map(chr, random.Random(5).sample(unassigned, 3000)))).encode()
    vocab, path = built["utf8_cap2_nfd"]
    byte_id = {t.token[0]: t.id for t in vocab.tokens() if len(t.token) == 1}
    # decoding uppercases each character after C, and the words after W
    raw = b"".join(b"C" + ch.encode() for ch in assigned) + b"W" + text
    ids = [byte_id[b] for b in raw]
    js = JsRun(node, {"vocab": str(path), "tables": str(tables), "prepare": [b64(text)], "decode": [ids]})
    want = {"prepare": [b64(vocab.prepare(text))], "decode": [b64(vocab.decode(ids))]}
    assert js.result() == want


def test_tables_are_compact_and_cover_unicode() -> None:
    t = unicode_tables()
    assert t["unidata_version"] == unicodedata.unidata_version
    assert sum(t["props"][::2]) == sum(t["ccc"][::2]) == 0x110000
    assert len(unicode_tables_json()) < 64 * 1024


def test_ascii_needs_no_tables_and_other_text_says_what_is_missing(node: str, built: dict) -> None:
    texts = [d.decode() for d in INPUTS if d.isascii()][:200]
    for name in ("utf8_cap2_all_unk", "utf8_cap1_nfd_unk", "utf8_cap0_lead_accents", "utf16_cap1"):
        vocab, path = built[name]
        ids = [vocab.encode(t) for t in texts]
        got = run_js(node, {"vocab": str(path), "encode_text": texts, "decode": ids})
        assert got["encode_text"] == ids
        assert got["decode"] == [b64(vocab.decode(i)) for i in ids]
    vocab, path = built["utf8_cap2_nfd"]
    message = JsRun(node, {"vocab": str(path), "encode_text": ["café"]}).error()
    assert "non-ASCII text needs the Unicode tables: call setUnicodeTables()" in message


def _py_load_error(data: bytes) -> str | None:
    try:
        Vocab.from_bytes(data, "case")
    except VocabError as exc:
        return str(exc)
    return None


def test_damaged_vocab_files_fail_with_pythons_message(node: str, tables: Path, built: dict) -> None:
    vocab, path = built["utf8_cap2_all_unk"]
    raw = path.read_bytes()
    rng = random.Random(7)
    images = [raw[:cut] for cut in (0, 10, 23, 24, 200, len(raw) // 2, len(raw) - 1)] + [raw + b"\0"]
    for _ in range(150):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(40) if rng.random() < 0.5 else rng.randrange(len(data))
            data[at] = rng.randrange(256)
        images.append(bytes(data))
    js = JsRun(node, {"vocab": str(path), "tables": str(tables), "load": [b64(i) for i in images]})
    want = [_py_load_error(i) for i in images]
    got = js.result()
    assert got["load"] == want
    assert any(m is None for m in got["load"]) and sum(m is not None for m in got["load"]) > 50


# -- the Stentor tokenizer layer -------------------------------------------------------------------

def _tokenizer_dir(vocab: Vocab, out: Path) -> Path:
    from stentor.tokenizer.hf import StentorTokenizer

    StentorTokenizer.from_vocab(vocab).save_pretrained(str(out))
    return out


def _tokenizer_cases(codec: TextCodec, rng: random.Random) -> dict:
    names = [codec.added[i].content for i in sorted(codec.added)][:6] + ["<s", "</", "<reserved_", "s>"]
    texts = [d.decode() for d in INPUTS if _valid(d)][:600]
    # lone surrogates, and a BOM opening a run (Python keeps it, a default TextDecoder would not)
    mixed = ["\udc80abc</s>", "\ud800x<s>", "</s>", "<s></s><s>", "", "\ufeffHello", "</s>\ufeff\ufeffx<s>\ufeff"]
    for text in texts[:400]:
        cut = rng.randrange(len(text) + 1)
        mixed.append(text[:cut] + rng.choice(names) + text[cut:] + rng.choice(["", "</s>", "</s></s>", "<<s>>"]))
    base = codec.vocab.id_table_size
    added = sorted(codec.added)
    ids_pool = sorted({t.id for t in codec.vocab.tokens()})
    decodes = [codec.encode(t) for t in mixed[:150]]
    for _ in range(150):
        decodes.append([rng.choice(added) if rng.random() < 0.2 else base + 10_000 if rng.random() < 0.05
                        else rng.choice(ids_pool) for _ in range(rng.randint(0, 25))])
    return {
        "tok_encode": [[t, add] for t in texts + mixed for add in (True, False)],
        "tok_decode": [[ids, skip] for ids in decodes for skip in (False, True)],
        "tok_stream": [[_chunks(rng, ids), skip] for ids in decodes[::2] for skip in (True, False)],
        "tok_pieces": list(range(len(codec.added) + base + 3)),
    }


def _py_tok_stream(codec: TextCodec, chunks: list[list[int]], skip: bool) -> list[str]:
    dec = codec.streaming_decoder(skip)
    return [dec.push(c) for c in chunks] + [dec.flush()]


def _compare_tokenizer(node: str, tables: Path, path: Path, config: dict, codec: TextCodec, seed: str) -> None:
    cases = _tokenizer_cases(codec, random.Random(seed))
    js = JsRun(node, {"vocab": str(path), "tables": str(tables), "tokenizer_config": config, **cases})
    encoded = [codec.encode(text, add) for text, add in cases["tok_encode"]]
    got = js.result()
    assert got["tok_info"] == {"bos": codec.bos_token_id, "eos": codec.eos_token_id, "pad": codec.pad_token_id,
                               "special": codec.all_special_ids}
    for (text, _), want, ids in zip(cases["tok_encode"], encoded, got["tok_encode"]):
        assert ids == want, text
    for (ids, skip), text in zip(cases["tok_decode"], got["tok_decode"]):
        assert text == codec.decode(ids, skip), ids
    for (chunks, skip), out in zip(cases["tok_stream"], got["tok_stream"]):
        assert out == _py_tok_stream(codec, chunks, skip), chunks
        assert "".join(out) == codec.decode([i for c in chunks for i in c], skip)
    assert got["tok_pieces"] == [codec.decode([i]) for i in cases["tok_pieces"]]


@pytest.mark.parametrize("name", ["utf8_cap2_nfd", "utf8_cap1_nfd_unk", "none_cap0"])
def test_stentor_tokenizer_matches_text_codec(node: str, tables: Path, built: dict, tmp_path: Path,
                                              name: str) -> None:
    vocab, _ = built[name]
    out = _tokenizer_dir(vocab, tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text())
    codec = TextCodec.from_dir(out)
    _compare_tokenizer(node, tables, out / "tokenizer.vocab", config, codec, name)


def test_hand_written_config(node: str, tables: Path, built: dict, tmp_path: Path) -> None:
    """Options set by hand: no BOS, EOS appended, a dict-valued bos_token, a non-special added token."""
    vocab, _ = built["utf8_cap2_all_unk"]
    vocab.save(tmp_path / "tokenizer.vocab")
    base = vocab.id_table_size
    config = {"tokenizer_class": "StentorTokenizer", "add_bos_token": False, "add_eos_token": True,
              "bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": None,
              "added_tokens_decoder": {str(base + 2): {"content": "<|user|>", "special": False},
                                       str(base): {"content": "</s>"}, str(base + 1): {"content": "<s>", "special": True},
                                       str(base + 3): {"content": "<|user|>x", "special": None}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    codec = TextCodec.from_dir(tmp_path)
    _compare_tokenizer(node, tables, tmp_path / "tokenizer.vocab", config, codec, "hand")


def test_config_errors_are_one_line(node: str, built: dict) -> None:
    _, path = built["none_cap0"]
    for config in ({"tokenizer_class": "GPT2Tokenizer"}, {"tokenizer_class": "StentorTokenizer",
                                                          "added_tokens_decoder": {"x": {"content": "<s>"}}}):
        message = JsRun(node, {"vocab": str(path), "tokenizer_config": config}).error()
        assert message.startswith("Error: tokenizer_config.json"), message


# -- the official vectors (../shared) -----------------------------------------------------------------

SHARED_VOCABS = [
    "english-4000-strict-cap2-oracle", "english-8000-strict-cap1-oracle", "example", "tm_none_cap0_256",
    "tm_none_cap1_unk", "tm_none_cap2_unk", "tm_utf8_cap0_nfd", "tm_utf8_cap0_normall_unk",
    "tm_utf8_cap1_nfd_unk", "tm_utf8_cap2_nfd_unk",
]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.shared
@pytest.mark.parametrize("name", SHARED_VOCABS)
def test_official_vectors(node: str, tables: Path, tm_dir: Path, name: str) -> None:
    enc = _jsonl(tm_dir / "encode" / f"{name}.jsonl")
    dec = _jsonl(tm_dir / "decode" / f"{name}.jsonl")
    with_text = [c for c in enc if "text" in c]
    rng = random.Random(name)
    streams = [_chunks(rng, c["ids"]) for c in dec[:60]]
    got = run_js(node, {"vocab": str(tm_dir / "vocabs" / f"{name}.vocab"), "tables": str(tables),
                        "encode": [c["b64"] for c in enc], "encode_text": [c["text"] for c in with_text],
                        "decode": [c["ids"] for c in dec], "stream": streams})
    for case, ids in zip(enc, got["encode"]):
        assert ids == case["ids"], case["b64"]
    for case, ids in zip(with_text, got["encode_text"]):
        assert ids == case["ids"], case["text"]
    for case, out in zip(dec, got["decode"]):
        assert out == case["b64"], case["ids"]
    for case, chunks, out in zip(dec, streams, got["stream"]):
        assert b"".join(base64.b64decode(o) for o in out) == base64.b64decode(case["b64"]), chunks
    assert len(got["encode"]) == len(enc) and len(got["decode"]) == len(dec)


@pytest.mark.shared
def test_encode_speed_on_a_2kb_prompt(node: str, tables: Path, tm_dir: Path) -> None:
    """Well under 50 ms for a 2 KB English prompt (a browser budget; node runs the same engine)."""
    text = (tm_dir / "corpus" / "english.txt").read_bytes()[:2048].decode("utf-8", "ignore")
    name = "english-8000-strict-cap1-oracle"
    got = run_js(node, {"vocab": str(tm_dir / "vocabs" / f"{name}.vocab"), "tables": str(tables),
                        "encode_text": [text], "bench": {"text": text, "repeat": 50}})
    assert got["encode_text"] == [Vocab.load(tm_dir / "vocabs" / f"{name}.vocab").encode(text)]
    assert got["bench"] < 25, f"{got['bench']:.1f} ms per encode"
