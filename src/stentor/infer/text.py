"""Token ids to text while generating: streaming decode and the replacement-character ban."""

from __future__ import annotations

from typing import Protocol

import torch

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


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _completable(tail: bytes) -> bool:
    """Some 1-3 continuation bytes turn `tail` (a lead byte + maybe continuations) into a valid character."""
    return any(
        _valid(tail + bytes([first]) + b"\x80" * more) for first in range(0x80, 0xC0) for more in range(3)
    )


def replacement_only(data: bytes) -> bool:
    """True when `data` cannot occur anywhere inside valid UTF-8 text.

    A token's bytes may legitimately be a fragment of a character: up to 3 leading continuation
    bytes (the tail of a character begun by earlier tokens) and an incomplete character at the
    end (finished by later tokens). The token is replacement-only when no such reading makes it
    valid — e.g. 0xC0, 0xF5-0xFF, a lead byte followed by a non-continuation byte, an overlong or
    surrogate prefix like E0 80 or ED A0, or more than 3 continuation bytes in a row. Such a token
    decodes to U+FFFD whatever surrounds it.
    """
    lead = 0
    while lead < len(data) and lead < 4 and _is_continuation(data[lead]):
        lead += 1
    if lead == 4:
        return True
    body = data[lead:]
    if _valid(body):
        return False
    return not any(_valid(body[:-cut]) and _completable(body[-cut:]) for cut in range(1, min(3, len(body)) + 1))


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


def replacement_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """[vocab_size] bool: the ids `suppress_replacement_tokens` bans (see `replacement_only`)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i, data in enumerate(token_bytes(tokenizer, vocab_size)):
        if data is not None and replacement_only(data):
            mask[i] = True
    return mask
