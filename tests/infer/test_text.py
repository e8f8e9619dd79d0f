"""Streaming decode and the replacement-only token rule."""

from __future__ import annotations

import random

import pytest
import numpy as np
import torch

from stentor.infer.text import REPLACEMENT, IncrementalDecoder, Utf8Guard, replacement_only, token_bytes


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"abc", False),
        (b"\xc3\xa9", False),  # é
        (b"\xc3", False),  # lead byte: completed by the next token
        (b"\xa9 caf", False),  # tail of a character begun earlier
        (b"\x80\x80\x80", False),  # tail of a 4-byte character
        (b"\xe6\x9d", False),  # incomplete 3-byte lead
        (b"\xff", True),
        (b"\xc0\xaf", True),  # overlong
        (b"\xe0\x80", True),  # overlong 3-byte prefix
        (b"\xed\xa0", True),  # surrogate prefix
        (b"\xf4\x90", True),  # beyond U+10FFFF
        (b"\x80\x80\x80\x80", True),  # four continuation bytes never occur in a row
        (b"a\xc3b", True),  # a lead byte followed by ASCII
        (b"ab\xf8", True),
    ],
)
def test_replacement_only(data, expected):
    assert replacement_only(data) is expected


def test_byte_level_bpe_bytes_and_mask(bpe):
    data = token_bytes(bpe, len(bpe))
    text = "Café 東京 🙂"
    assert b"".join(data[i] for i in bpe(text)["input_ids"]) == text.encode()
    guard = Utf8Guard(bpe, len(bpe))
    always = {data[i] for i in np.flatnonzero(guard.banned.all(0)).tolist()}
    assert always == {d for d in data if d is not None and replacement_only(d)}
    assert bytes([0xFF]) in always and bytes([0xC0]) in always
    assert bytes([0xC3]) not in always and bytes([0xA9]) not in always


def test_guard_follows_characters(bpe):
    data = token_bytes(bpe, len(bpe))
    guard = Utf8Guard(bpe, len(bpe))
    byte_id = {d: i for i, d in enumerate(data) if d is not None and len(d) == 1}
    start = guard.start([[bpe.bos_token_id]])
    assert guard.banned[start[0], byte_id[b"\xa9"]]  # a continuation byte cannot start a character
    inside = guard.advance(start, torch.tensor([byte_id[b"\xc3"]]))
    assert not guard.banned[inside[0], byte_id[b"\xa9"]]  # ... but can finish é
    assert guard.banned[inside[0], byte_id[b"a"]]  # and ASCII cannot interrupt it
    done = guard.advance(inside, torch.tensor([byte_id[b"\xa9"]]))
    assert done.tolist() == start.tolist()


def test_incremental_decoder_never_splits_a_character(bpe):
    text = "Café, naïve, 東京 and emoji 🙂 — a school."
    ids = bpe(text)["input_ids"]
    decoder = IncrementalDecoder(bpe)
    pieces = [decoder.push([i]) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)


def test_incremental_decoder_matches_full_decode_on_random_ids(bpe):
    rng = random.Random(0)
    ids = [rng.randrange(len(bpe)) for _ in range(300)]
    decoder = IncrementalDecoder(bpe)
    streamed = "".join(decoder.push([i]) for i in ids) + decoder.flush()
    assert streamed == bpe.decode(ids, skip_special_tokens=True)


def test_stop_text_holds_back_only_what_could_begin_a_stop_and_keeps_items_with_their_text():
    from stentor.infer.text import StopText

    stop = StopText(["bcd", "xy"])
    assert stop.push("ab", 1) == [("a", 1)]  # "b" could begin "bcd"
    assert stop.push("c", 2) == []  # "bc" still could
    assert stop.push("e", 3) == [("b", None), ("c", 2), ("e", 3)]  # the straddled piece's item went with "a"
    assert stop.push("wx", 4) == [("w", 4)]
    assert stop.push("yz", 5) == [] and stop.stopped  # the stop text and everything after it are dropped
    assert stop.flush() == [] and stop.push("more", 6) == []
    at_start = StopText(["Hi"])
    assert at_start.push("Hi there", 1) == [] and at_start.stopped
    assert StopText(["zz"]).flush() == []
    unseen = StopText(["zzz"])
    assert unseen.push("az", 1) == [("a", 1)] and unseen.flush() == [("z", None)]


def test_a_stop_string_inside_a_character_split_across_tokens(bpe):
    """東 is three byte tokens: the decoder releases it whole, and a stop on it cuts right before it."""
    from stentor.infer.text import StopText

    text = "Café 東京 and more"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(bpe)
    pieces = [decoder.push([t]) for t in ids] + [decoder.flush()]
    assert "" in pieces and "".join(pieces) == text  # some tokens alone are no text yet
    for stops, kept in ((["東"], "Café "), (["京 a"], "Café 東"), (["é 東京 and"], "Caf")):
        stop = StopText(stops)
        out = [t for piece in pieces for t, _ in stop.push(piece)] + [t for t, _ in stop.flush()]
        assert "".join(out) == kept and stop.stopped, stops
