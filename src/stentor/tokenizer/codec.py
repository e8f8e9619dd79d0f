"""Text <-> ids for a saved StentorTokenizer without transformers: what the lean inference path uses.

Self-contained like `tokenization_stentor.py` (it imports only `.tokenmonster` and the standard
library), which imports its decoding pieces from here, so both give the same ids and text.
`TextCodec.from_dir` reads the ids of the special tokens from `tokenizer_config.json`
(`added_tokens_decoder`) rather than assuming an order.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from .tokenmonster import Vocab


class Special(NamedTuple):
    content: str
    special: bool = True


def special_splitter(names) -> re.Pattern | None:
    """A regex whose `split` cuts text at added-token names, longest first (the match transformers' trie makes)."""
    names = sorted(names, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None


def split_text(splitter: re.Pattern | None, text: str) -> Iterator[tuple[bool, str]]:
    """(is an added token, piece) for each non-empty piece of `text` cut by `special_splitter`."""
    for k, part in enumerate(splitter.split(text) if splitter else [text]):
        if part:
            yield bool(k % 2), part


def split_segments(ids: Iterable[int], base: int, added: dict, skip_special_tokens: bool) -> Iterator[list[int] | str]:
    """Runs of TokenMonster ids, and the text of the added tokens between them (`added`: id -> .content/.special).

    Added tokens always end a run, skipped or not, so decoding restarts its capcode/UTF-8 state
    there (a special is a document boundary). Ids outside the vocabulary contribute nothing.
    """
    run: list[int] = []
    for token_id in ids:
        token_id = int(token_id)
        if 0 <= token_id < base:
            run.append(token_id)
        elif token_id in added:
            yield run
            run = []
            token = added[token_id]
            yield "" if skip_special_tokens and token.special else token.content
    yield run


class StreamingDecoder:
    """Incremental decode: `push(ids)` returns only complete characters; `flush()` the rest.

    `tokenizer` has `.vocab` and `._segments(ids, skip)`. The TokenMonster streaming decoder holds
    back an unfinished capcode marker or UTF-8 sequence; a Python incremental UTF-8 decoder on top
    makes the text split-invariant, so the concatenated output always equals `decode(all_ids)`.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._start_run()

    def _start_run(self) -> None:
        self._bytes = self._tokenizer.vocab.decoder()
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _end_run(self) -> str:
        text = self._text.decode(self._bytes.flush(), final=True)
        self._start_run()
        return text

    def push(self, ids: Iterable[int]) -> str:
        parts = []
        segments = list(self._tokenizer._segments(ids, self._skip))
        for k, seg in enumerate(segments):
            if isinstance(seg, str):
                parts.append(seg)
            elif seg:
                parts.append(self._text.decode(self._bytes.decode(seg)))
            if k < len(segments) - 1 and not isinstance(seg, str):
                parts.append(self._end_run())  # an added token follows: close the run as decode() does
        return "".join(parts)

    def flush(self) -> str:
        return self._end_run()


def text_to_bytes(text: str) -> bytes:
    """UTF-8 bytes of `text`; lone surrogates (e.g. from surrogateescape-decoded bytes) never raise."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", errors="surrogatepass")


class DamagedFile(ValueError):
    """A file of a Stentor tokenizer directory that cannot be read; the message names it."""


CHECKSUMS_FILE = "tokenizer_checksums.json"
# What decides how text tokenizes: a changed byte in any of them must be an error, not a new tokenization.
CHECKED_FILES = ("tokenizer.vocab", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "chat_template.jinja")  # fmt: skip


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces (checkpoints and token files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(path: str | os.PathLike, files: Iterable[str] = CHECKED_FILES, manifest: str = CHECKSUMS_FILE) -> Path:
    """Record the SHA-256 of `files` (those present) in `path/manifest`, for `verify_checksums`.
    Tokenizer directories use the defaults; checkpoints list their own files."""
    path = Path(path)
    sums = {name: file_sha256(path / name) for name in files if (path / name).is_file()}
    out = path / manifest
    out.write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def verify_checksums(path: str | os.PathLike, files: Iterable[str] = CHECKED_FILES, manifest: str = CHECKSUMS_FILE) -> None:
    """DamagedFile unless every file listed in `path/manifest` (only ever some of `files`) still has
    its recorded SHA-256. Directories written elsewhere (the hub's) carry no manifest and pass."""
    path, files = Path(path), set(files)
    listing = path / manifest
    if not listing.is_file():
        return
    try:
        sums = json.loads(_read(listing))
    except ValueError:
        sums = None
    hex_digest = lambda d: isinstance(d, str) and len(d) == 64 and all(c in "0123456789abcdef" for c in d)  # noqa: E731
    if not isinstance(sums, dict) or not all(name in files and hex_digest(d) for name, d in sums.items()):
        raise DamagedFile(f"{listing} is damaged")
    for name, digest in sorted(sums.items()):
        file = path / name
        if not file.is_file() or file_sha256(file) != digest:
            # which of the two changed cannot be known: name both
            raise DamagedFile(f"{file} does not match its checksum in {listing}: one of them is damaged "
                              f"(if you changed {name} on purpose, delete {manifest})")  # fmt: skip


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFile(f"{path} is damaged: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DamagedFile(f"cannot read {path}: {exc.strerror or exc}") from None


class TextCodec:
    """Encode and decode like the directory's StentorTokenizer: specials in text become their ids."""

    def __init__(self, vocab: Vocab, added: dict[int, Special], *, bos: str | None, eos: str | None,
                 pad: str | None, add_bos: bool = True, add_eos: bool = False, chat_template: str | None = None):
        self.vocab = vocab
        self.added = added
        ids = {token.content: i for i, token in added.items()}
        self.bos_token_id, self.eos_token_id = ids.get(bos or ""), ids.get(eos or "")
        self.pad_token_id = ids.get(pad or "")
        self.add_bos, self.add_eos = add_bos, add_eos
        self.chat_template = chat_template
        self.all_special_ids = sorted(i for i, token in added.items() if token.special)
        self._ids = ids
        self._split = special_splitter(ids)
        self._template = None

    @classmethod
    def from_dir(cls, path: str | os.PathLike, vocab: Vocab | None = None) -> TextCodec:
        """The codec of a directory written by StentorTokenizer.save_pretrained; ValueError for another
        kind of directory, StentorError for a damaged one of ours."""
        path = Path(path)
        if not (path / "tokenizer_config.json").is_file():
            raise ValueError(f"{path} has no tokenizer_config.json")
        verify_checksums(path)
        try:
            config = json.loads(_read(path / "tokenizer_config.json"))
        except ValueError as exc:
            raise DamagedFile(f"{path / 'tokenizer_config.json'} is damaged: {str(exc)[:80]}") from None
        if not isinstance(config, dict):
            raise DamagedFile(f"{path / 'tokenizer_config.json'} is damaged: it holds no JSON object")
        if config.get("tokenizer_class") != "StentorTokenizer":
            raise ValueError(f"{path} does not hold a StentorTokenizer")
        added = {int(i): Special(t["content"], bool(t.get("special", True)))
                 for i, t in (config.get("added_tokens_decoder") or {}).items()}
        template = config.get("chat_template")
        if template is None and (path / "chat_template.jinja").is_file():
            template = _read(path / "chat_template.jinja")

        def name(key: str) -> str | None:
            value = config.get(key)
            return value.get("content") if isinstance(value, dict) else value

        return cls(vocab if vocab is not None else Vocab.load(path / "tokenizer.vocab"), added,
                   bos=name("bos_token"), eos=name("eos_token"), pad=name("pad_token"),
                   add_bos=bool(config.get("add_bos_token", True)), add_eos=bool(config.get("add_eos_token", False)),
                   chat_template=template)

    def _segments(self, ids: Iterable[int], skip_special_tokens: bool):
        return split_segments(ids, self.vocab.id_table_size, self.added, skip_special_tokens)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        out: list[int] = [self.bos_token_id] if add_special_tokens and self.add_bos and self.bos_token_id is not None else []
        for special, part in split_text(self._split, text):
            if special:
                out.append(self._ids[part])
            else:
                out.extend(self.vocab.encode(text_to_bytes(part)))
        if add_special_tokens and self.add_eos and self.eos_token_id is not None:
            out.append(self.eos_token_id)
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        parts = []
        for seg in self._segments(ids, skip_special_tokens):
            parts.append(seg if isinstance(seg, str) else self.vocab.decode(seg).decode("utf-8", errors="replace"))
        return "".join(parts)

    def streaming_decoder(self, skip_special_tokens: bool = True) -> StreamingDecoder:
        return StreamingDecoder(self, skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False):
        """The chat template rendered as transformers renders it (sandboxed jinja2, trimmed blocks)."""
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(self.chat_template)
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}
