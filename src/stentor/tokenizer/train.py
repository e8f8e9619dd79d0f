"""Offline TokenMonster vocabulary training (`stentor vocab train`).

The method (docs/tokenizer.md): normalize and capcode the corpus exactly as the finished
vocabulary will, collect candidate tokens that strict mode allows (words, subwords, phrases of
whole words, digit pieces, runs of punctuation or whitespace), then repeatedly build a real
vocabulary from the pool, tokenize a sample with it and drop the tokens whose removal costs
least, until the target size is reached. The file is built by `build_vocab_from_yaml`, so flags,
alternatives and ids are computed exactly as upstream computes them.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stentor.errors import StentorError

log = logging.getLogger(__name__)

MODES = {"strict": 4}
SINGLE_BYTES = {
    "ascii": "include-ascii-bytes",
    "extended": "include-extended-bytes",
    "utf8": "include-utf8-bytes",
    "256": "include-256-bytes",
}
_RESERVE_BITS = {
    "include-256-bytes": 1,
    "include-utf8-bytes": 4,
    "include-ascii-bytes": 8,
    "include-extended-bytes": 16,
}

# Letters (any script) plus combining marks, which NFD splits off accented letters.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_LETTER = f"(?:[^\\W\\d_]|[{_MARKS}])"
_WORD = f"{_LETTER}+(?:['\u2019]{_LETTER}+)*"  # don't, it's: an apostrophe inside a word is part of it
_WORD_RE = re.compile(f" ?{_WORD}")
_PHRASE_RE = re.compile(f"(?: {_WORD}){{2,}}")
_DIGITS_RE = re.compile(r" ?\d+")
# Punctuation and whitespace runs, with the capcode-1 delete marker that often follows them
# (`\n\x7f`, ` "\x7f`: capcode 1 marks a word that follows anything but a space).
_OTHER_RE = re.compile(f"(?:[^\\w{_MARKS}\x7f]|_)+\x7f?")
_OPENERS = set("([{<\"'`")


@dataclass(frozen=True)
class TrainConfig:
    """What to train. Defaults mirror the card's vocabulary: UTF-8, NFD, capcode 1, strict."""

    vocab_size: int = 4000
    mode: str = "strict"
    capcode: int = 1
    normalization: str = "nfd"
    single_bytes: str = "utf8"  # always-kept single bytes; utf8 = every byte valid UTF-8 can contain
    max_token_length: int = 32
    min_occur: int = 3
    max_phrase_words: int = 4
    pool_factor: float = 2.5  # the first pool is this many times the number of regular slots
    prune_fraction: float = 0.5  # share of the surplus dropped per round
    sample_bytes: int = 2_000_000  # encoded bytes tokenized per round

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise StentorError(f"unknown mode {self.mode!r}; supported: {', '.join(MODES)}")
        if self.capcode not in (0, 1, 2):
            raise StentorError(f"capcode must be 0, 1 or 2, got {self.capcode}")
        if self.mode == "strict" and self.capcode == 0:
            raise StentorError("strict mode needs capcode 1 or 2 (as upstream); use --capcode 1")
        if self.single_bytes not in SINGLE_BYTES:
            raise StentorError(
                f"unknown single-byte set {self.single_bytes!r}; choose one of {', '.join(SINGLE_BYTES)}"
            )
        if not 2 <= self.max_token_length <= 40:
            raise StentorError(f"max token length must be between 2 and 40 bytes, got {self.max_token_length}")
        if not 1 <= self.vocab_size <= 1_000_000:
            raise StentorError(f"vocab size must be between 1 and 1,000,000, got {self.vocab_size}")
        if self.min_occur < 1 or self.sample_bytes < 1000:
            raise StentorError("min_occur must be >= 1 and sample_bytes >= 1000")

    def yaml_header(self) -> dict:
        flag = SINGLE_BYTES[self.single_bytes]
        return {
            "charset": "utf-8",
            "normalization": self.normalization,
            "capcode": self.capcode,
            "training-param": MODES[self.mode] | (_RESERVE_BITS[flag] << 3),
            flag: True,
        }


# --- corpus ---------------------------------------------------------------------------------


def corpus_files(patterns: Iterable[str]) -> list[Path]:
    """Expand files and globs (sorted, deduplicated); every pattern must match something."""
    files: list[Path] = []
    for pattern in patterns:
        matches = (
            sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if glob.has_magic(pattern) else [pattern]
        )
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise StentorError(f"no corpus file matches {pattern!r}; give .txt or .jsonl files or a glob")
        files += [Path(m) for m in matches if Path(m) not in files]
    return files


def read_corpus(patterns: Iterable[str]) -> list[str]:
    """Documents from .txt files (one document each) and .jsonl files (the "text" field of each line)."""
    docs: list[str] = []
    for path in corpus_files(patterns):
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise StentorError(f"cannot read {path}: {exc.strerror or exc}") from None
        if path.suffix != ".jsonl":
            docs.append(text)
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StentorError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be an object"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise StentorError(f'{path}:{lineno}: expected an object with a "text" string field')
            docs.append(record["text"])
    if not any(docs):
        raise StentorError("the corpus is empty; give files that contain text")
    return docs


# --- candidates -----------------------------------------------------------------------------


def _strict_punct_ok(tok: str) -> bool:
    """Strict mode keeps open-closers apart: at most one of ( [ { < " ' ` per punctuation token."""
    return sum(ch in _OPENERS for ch in tok) <= 1


def count_candidates(text: str, cfg: TrainConfig) -> Counter:
    """Occurrence counts of every token strict mode allows, in the encoded (capcoded) text.

    Tokens never cross a letter/digit/punctuation boundary; a word may carry one leading
    space; whole space-led words may join into phrases (` of the`, ` how are you`).
    """
    maxlen = cfg.max_token_length
    counts: Counter = Counter()

    def fits(tok: str) -> bool:
        return len(tok) <= maxlen if tok.isascii() else len(tok.encode("utf-8", "surrogatepass")) <= maxlen

    for word, n in Counter(_WORD_RE.findall(text)).items():  # every piece: ` pre`, `tion`, ` the`
        for i in range(len(word)):
            for j in range(i + 2, min(len(word), i + maxlen) + 1):
                if not fits(word[i:j]):
                    break
                counts[word[i:j]] += n
    for run in _PHRASE_RE.findall(text):
        parts = run.split(" ")[1:]
        for size in range(2, cfg.max_phrase_words + 1):
            for i in range(len(parts) - size + 1):
                phrase = " " + " ".join(parts[i : i + size])
                if fits(phrase):
                    counts[phrase] += 1
    for run, n in Counter(_DIGITS_RE.findall(text)).items():  # numbers in pieces of up to 3 digits
        digits = run.lstrip(" ")
        lead = run[: len(run) - len(digits)]
        for i in range(len(digits)):
            for j in range(i + 1, min(len(digits), i + 3) + 1):
                if i == 0 and lead:
                    counts[lead + digits[:j]] += n
                counts[digits[i:j]] += n
    for run, n in Counter(_OTHER_RE.findall(text)).items():
        for i in range(len(run)):
            for j in range(i + 2, min(len(run), i + maxlen) + 1):
                if fits(run[i:j]) and _strict_punct_ok(run[i:j]):
                    counts[run[i:j]] += n
    # Whole, valid UTF-8 characters only (upstream -only-valid); a capcode marker only at the end
    # (the builder adds the marker-prefixed variant of every word itself).
    bad = re.compile("[\ud800-\udfff" + ("CWD\x7f" if cfg.capcode == 2 else "") + "]|\x7f.")
    return Counter({tok: n for tok, n in counts.items() if n >= cfg.min_occur and not bad.search(tok)})


# --- selection ------------------------------------------------------------------------------


def _build(cfg: TrainConfig, scores: dict[str, float]):
    from stentor.tokenizer import build_vocab_from_yaml, use_fast_backend

    spec = cfg.yaml_header()
    spec["tokens"] = [{"token": tok, "score": max(score, 1e-9), "encoded": True} for tok, score in scores.items()]
    try:
        return use_fast_backend(build_vocab_from_yaml(spec))
    except ValueError as exc:
        raise StentorError(f"could not build the vocabulary: {exc}") from None


def prepare_corpus(docs: list[str], cfg: TrainConfig) -> bytes:
    """The corpus as the vocabulary will see it: normalized and capcoded, documents joined by newlines."""
    from tqdm.auto import tqdm

    probe = _build(cfg, {})
    progress = tqdm(docs, desc="encoding corpus", unit="doc", disable=None if len(docs) > 1 else True)
    return b"\n".join(probe.prepare(doc.encode("utf-8", "surrogateescape")) for doc in progress)


def _sample(data: bytes, size: int, pieces: int = 64) -> bytes:
    """`size` bytes spread evenly over `data`, cut at newlines so words stay whole."""
    if len(data) <= size:
        return data
    step, width = len(data) // pieces, size // pieces
    out = []
    for k in range(pieces):
        start = data.find(b"\n", k * step)
        if start < 0:
            break
        end = data.find(b"\n", start + width)
        out.append(data[start + 1 : end if end > 0 else len(data)])
    return b"\n".join(out)


def select_tokens(
    candidates: Counter, sample: bytes, cfg: TrainConfig, progress: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Prune the candidate pool to the target size by tokenizing `sample` with real vocabularies.

    Each round builds the pool's vocabulary, counts how often the tokenizer actually emits each
    token on the sample, and drops the least-used share of the surplus (ties: the rarer
    candidate). Dropping a token costs about one extra token per use, since what it covered is
    then spelled with two shorter ones; weighting uses by token length was measured to do worse
    (docs/tokenizer.md). Returns token -> score (share of the sample's bytes the token covers),
    as trainvocab writes it.
    """
    slots = regular_slots(cfg)
    ranked = sorted(candidates, key=lambda t: (-candidates[t] * (len(t) - 1), t))
    pool = ranked[: max(slots, int(slots * cfg.pool_factor))]
    if len(pool) < slots:
        log.warning("only %d candidate tokens for %d regular slots: the vocabulary will be smaller", len(pool), slots)
    while True:
        vocab = _build(cfg, dict.fromkeys(pool, 1.0))
        usage = np.bincount(np.asarray(vocab.encode_prepared(sample), dtype=np.int64), minlength=vocab.id_table_size)
        ids = {info.token: info.id for info in vocab.tokens()}
        sizes = {tok: len(tok.encode("utf-8")) for tok in pool}
        uses = {tok: int(usage[ids[tok.encode("utf-8")]]) for tok in pool}
        surplus = len(pool) - slots
        if surplus <= 0:
            total = max(len(sample), 1)
            return {tok: uses[tok] * sizes[tok] / total for tok in pool}
        drop = surplus if surplus <= max(20, slots // 50) else max(1, math.ceil(surplus * cfg.prune_fraction))
        pool = sorted(pool, key=lambda t: (uses[t], candidates[t]))[drop:]
        if progress:
            progress(drop)


def regular_slots(cfg: TrainConfig) -> int:
    """How many multi-byte tokens fit beside the always-kept single bytes."""
    singles = _build(cfg, {}).vocab_size
    if cfg.vocab_size <= singles:
        raise StentorError(
            f"vocab size {cfg.vocab_size} leaves no room beside the {singles} single-byte tokens of "
            f"--single-bytes {cfg.single_bytes}; use a larger --size"
        )
    return cfg.vocab_size - singles


def train_vocab(corpus: Iterable[str], cfg: TrainConfig, output: str | os.PathLike | None = None):
    """Train a vocabulary from corpus files/globs; save it atomically to `output` if given."""
    from tqdm.auto import tqdm

    from stentor.fileio import atomic_write_bytes, ensure_writable_dir

    slots = regular_slots(cfg)  # checks the settings before any heavy work
    if output is not None:
        ensure_writable_dir(Path(output).parent)
    docs = read_corpus(corpus)
    log.info("read %d document(s), %d characters", len(docs), sum(map(len, docs)))
    data = prepare_corpus(docs, cfg)
    candidates = count_candidates(data.decode("utf-8", "surrogateescape"), cfg)
    log.info("%d candidate tokens occur at least %d times", len(candidates), cfg.min_occur)
    surplus = max(0, min(len(candidates), int(slots * cfg.pool_factor)) - slots)
    with tqdm(total=surplus, desc="pruning vocabulary", unit="tok", disable=None) as bar:
        scores = select_tokens(candidates, _sample(data, cfg.sample_bytes), cfg, progress=bar.update)
    vocab = _build(cfg, scores)
    if output is not None:
        atomic_write_bytes(output, vocab.to_bytes())
    return vocab
