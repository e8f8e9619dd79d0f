"""Token ids to text while generating: streaming decode and the replacement-character ban."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stentor.errors import StentorError

REPLACEMENT = "\ufffd"


class TextStream(Protocol):
    def push(self, ids: list[int]) -> str: ...

    def flush(self) -> str: ...


class IncrementalDecoder:
    """Streaming decode for any HF tokenizer: emit only text that later tokens cannot change.

    Decodes a short window twice, without and with the new ids, and emits the difference once it
    does not end in U+FFFD (a multi-byte character may still be completing). The window then
    slides forward, so each push costs O(window), and context-dependent spacing (SentencePiece
    drops a leading space) is the same in both decodes.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids before this point are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


def streaming_decoder(tokenizer, skip_special_tokens: bool = True) -> TextStream:
    """The tokenizer's own streaming decoder when it has one (StentorTokenizer), else the generic one."""
    own = getattr(tokenizer, "streaming_decoder", None)
    if callable(own):
        return own(skip_special_tokens=skip_special_tokens)
    return IncrementalDecoder(tokenizer, skip_special_tokens)


# -- tokens that can only ever render as U+FFFD ---------------------------------------------------


def _bytes_to_unicode_inverse() -> dict[str, int]:
    """GPT-2 byte-level BPE alphabet: the printable character that stands for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def token_bytes(tokenizer, vocab_size: int) -> list[bytes | None]:
    """The raw bytes of every id (None for special or unknown ids), or a StentorError.

    TokenMonster vocabularies give them directly; byte-level BPE tokens map each character back to
    its byte; SentencePiece byte-fallback pieces `<0xAB>` are that byte, other pieces their UTF-8.
    """
    out: list[bytes | None] = [None] * vocab_size
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = getattr(tokenizer, "vocab", None)
    if hasattr(vocab, "id_to_token") and hasattr(vocab, "id_table_size"):
        for i in range(min(vocab.id_table_size, vocab_size)):
            if i not in special:
                out[i] = vocab.id_to_token(i)
        return out
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    byte_of = _bytes_to_unicode_inverse()
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = type(decoder).__name__ == "ByteLevel" or "ByteLevel" in repr(decoder)
    for i, piece in enumerate(pieces):
        if piece is None or i in special:
            continue
        if byte_level:
            if all(ch in byte_of for ch in piece):
                out[i] = bytes(byte_of[ch] for ch in piece)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = bytes([int(piece[3:5], 16)])
        else:
            out[i] = piece.replace("\u2581", " ").encode("utf-8")
    if not byte_level and not any(p and p.startswith("<0x") for p in pieces):
        raise StentorError(
            f"cannot tell which tokens of {type(tokenizer).__name__} are raw bytes (not TokenMonster, byte-level "
            "BPE or SentencePiece byte fallback); run without --suppress-replacement"
        )
    return out


def token_pieces(tokenizer, vocab_size: int) -> tuple[list[str], list[bytes]]:
    """How each id reads on its own, and its bytes: text where its bytes are whole UTF-8, each byte
    that is not as `<0xAC>` (never a bare U+FFFD), specials by name. For logprobs and token views."""
    raw = token_bytes(tokenizer, vocab_size)
    vocab = getattr(tokenizer, "vocab", None)
    if hasattr(vocab, "decode"):  # TokenMonster: each token decoded alone, so capcode markers are applied
        raw = [vocab.decode([i]) if data is not None else None for i, data in enumerate(raw)]
    names: list[str] = []
    for i, data in enumerate(raw):
        if data is None:
            try:
                name = tokenizer.decode([i], skip_special_tokens=False)
            except (IndexError, KeyError, ValueError):
                name = ""
            names.append(name or f"<id {i}>")
            raw[i] = name.encode("utf-8")
            continue
        names.append("".join(
            f"<0x{ord(ch) - 0xDC00:02X}>" if "\udc80" <= ch <= "\udcff" else ch
            for ch in data.decode("utf-8", errors="surrogateescape")
        ))  # fmt: skip
    return names, raw


# UTF-8 decoder states: (continuation bytes still needed, allowed range of the next one).
_COMPLETE = (0, 0x80, 0xBF)


def _utf8_step(state: tuple[int, int, int], byte: int) -> tuple[int, int, int] | None:
    """The decoder state after `byte`, or None when `byte` makes the text invalid here."""
    need, lo, hi = state
    if need:
        return (need - 1, 0x80, 0xBF) if lo <= byte <= hi else None
    if byte < 0x80:
        return _COMPLETE
    if 0xC2 <= byte <= 0xDF:
        return (1, 0x80, 0xBF)
    if 0xE0 <= byte <= 0xEF:
        return (2, 0xA0 if byte == 0xE0 else 0x80, 0x9F if byte == 0xED else 0xBF)
    if 0xF0 <= byte <= 0xF4:
        return (3, 0x90 if byte == 0xF0 else 0x80, 0x8F if byte == 0xF4 else 0xBF)
    return None


# Every state a token can start in: between characters, or inside one (any lead byte's constraints).
_ALL_STATES = [_COMPLETE, (1, 0x80, 0xBF), (2, 0x80, 0xBF), (2, 0xA0, 0xBF), (2, 0x80, 0x9F),
               (3, 0x80, 0xBF), (3, 0x90, 0xBF), (3, 0x80, 0x8F)]


def _run(state: tuple[int, int, int] | None, data: bytes) -> tuple[int, int, int] | None:
    for byte in data:
        if state is None:
            return None
        state = _utf8_step(state, byte)
    return state


def replacement_only(data: bytes) -> bool:
    """True when `data` cannot occur anywhere inside valid UTF-8 text: it renders as U+FFFD always.

    A token may be a fragment of a character: it may start inside a character begun by earlier
    tokens (up to 3 continuation bytes) and end inside one that later tokens finish. It is
    replacement-only when it is invalid from every starting state — e.g. 0xC0, 0xF5-0xFF, a lead
    byte followed by a non-continuation byte, an overlong or surrogate prefix like E0 80 or ED A0,
    or more than 3 continuation bytes in a row. These are the tokens `Utf8Guard` bans in every state.
    """
    return all(_run(state, data) is None for state in _ALL_STATES)


class Utf8Guard:
    """Bans, at each step, the tokens that would put a U+FFFD into the text generated so far.

    Per row it tracks the UTF-8 decoder state of the generated bytes (inside a character or not)
    and bans every token whose bytes cannot continue validly from there: a continuation byte after
    a complete character, a new character while one is unfinished, and the always-invalid tokens of
    `replacement_only`; special tokens (no bytes) only between characters, and on a row's last token
    anything that would leave a character unfinished. With
    TokenMonster vocabularies this is what removes the card's "PDF tokens": their byte tokens are
    valid pieces of characters, and only the model's invalid sequences of them render as U+FFFD.
    """

    def __init__(self, tokenizer, vocab_size: int):
        data = token_bytes(tokenizer, vocab_size)
        states = [_COMPLETE]
        index = {_COMPLETE: 0}
        transitions: list[list[int]] = []
        k = 0
        while k < len(states):  # discover reachable states breadth-first
            row = []
            for token in data:
                if token is None:  # specials: only between characters (a cut character would decode to U+FFFD)
                    state = _COMPLETE if states[k] == _COMPLETE else None
                else:
                    state = _run(states[k], token)
                if state is not None and state not in index:
                    index[state] = len(states)
                    states.append(state)
                row.append(-1 if state is None else index[state])
            transitions.append(row)
            k += 1
        self.next_state = np.array(transitions, dtype=np.int32)  # [states, vocab], -1 = banned
        self.banned = self.next_state < 0
        self.unfinished = self.next_state > 0  # tokens that leave a character open

    def mask(self, states: np.ndarray, last: np.ndarray) -> np.ndarray:
        """[batch, V] tokens to ban; on a row's `last` token also those that leave a character open.

        A row where that would ban everything keeps the looser mask (or none), so sampling never
        faces an empty distribution.
        """
        states, last = np.asarray(states), np.asarray(last, dtype=bool)
        banned = self.banned[states]
        stricter = banned | (self.unfinished[states] & last[:, None])
        banned = np.where(stricter.all(-1, keepdims=True), banned, stricter)
        return banned & ~banned.all(-1, keepdims=True)

    def start(self, prompts: list[list[int]]) -> np.ndarray:
        """The state after each prompt (an invalid stretch in a prompt just resets the state)."""
        out = []
        for prompt in prompts:
            state = 0
            for token in prompt:
                state = max(int(self.next_state[state, token]), 0)
            out.append(state)
        return np.array(out, dtype=np.int32)

    def advance(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return np.maximum(self.next_state[np.asarray(states), np.asarray(tokens)], 0)


# -- stop strings ---------------------------------------------------------------------------------


class StopText:
    """Cuts a stream of text pieces at the first of some stop strings, across piece boundaries.

    `push(piece, item)` returns the (text, item) pairs that are safe to send now: text that can no
    longer turn out to begin a stop string. Text that could is held back, never more than the
    longest stop string less one character. Once a stop string appears, `stopped` is true: the text
    before it is released and the rest dropped. An item (a token's record) goes out with the first
    text of its piece; a piece cut at the stop keeps its item only if some of its text is released.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending: list[tuple[str, object]] = []
        self.text = ""
        self.stopped = False

    def push(self, piece: str, item: object = None) -> list[tuple[str, object]]:
        if self.stopped:
            return []
        self.pending.append((piece, item))
        self.text += piece
        found = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return self._release(min(found), drop_rest=True)
        held = 0
        for stop in self.stops:  # the longest end of the text that begins some stop string
            held = max(held, next((n for n in range(min(len(stop) - 1, len(self.text)), 0, -1)
                                   if self.text.endswith(stop[:n])), 0))  # fmt: skip
        return self._release(len(self.text) - held)

    def flush(self) -> list[tuple[str, object]]:
        """Everything held back (the stream ended without a stop string)."""
        return [] if self.stopped else self._release(len(self.text))

    def _release(self, upto: int, drop_rest: bool = False) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        while self.pending:
            piece, item = self.pending[0]
            if len(piece) <= upto and not (drop_rest and upto == 0):  # at the cut itself: part of the stop
                out.append((piece, item))
                upto -= len(piece)
                self.pending.pop(0)
                continue
            if upto > 0:  # a piece that straddles the cut: its first part now, the rest stays
                out.append((piece[:upto], item))
                self.pending[0] = (piece[upto:], None)
            break
        if drop_rest:
            self.pending.clear()
        self.text = "".join(p for p, _ in self.pending)
        return out
