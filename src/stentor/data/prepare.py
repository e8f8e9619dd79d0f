"""Tokenize once: the mixed document stream becomes `train.bin` and `val.bin` token files.

Layout of `out_dir` when done:
    train.bin, val.bin   flat token streams, each document as <s> ids </s> (uint16 if the vocab fits)
    meta.json            counts, dtype, tokenizer identity and the config; written last, so it marks completion

The stream is cut into chunks of `CHUNK_DOCS` documents that never straddle the
validation/train boundary. Chunks are tokenized in worker processes, written in stream
order as shard files under `out_dir/.work/`, and recorded in `progress.json` after each
shard, so a killed run resumes at the first unrecorded chunk and produces the same bytes.
The output does not depend on the number of workers.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from stentor.data.clean import clean_text
from stentor.data.sources import SourceSpec, check_source, mixed_documents, resolve_files
from stentor.errors import StentorError
from stentor.fileio import atomic_file, atomic_write_bytes, atomic_write_text, ensure_writable_dir, file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_DOCS = 256  # documents per shard: small enough to lose little on a kill, large enough for fast batch encoding
WORK_DIR = ".work"


def card_sources() -> list[SourceSpec]:
    """The card's training mix: FineWeb-HQ and StenCore, streamed from the hub, equal weights."""
    return [SourceSpec(hf_id="epfml/FineWeb-HQ"), SourceSpec(hf_id="StentorLabs/StenCore")]


@dataclass
class DataConfig:
    """What to tokenize. Defaults are the card's: 2,000 validation documents, 240M source tokens.

    From YAML it is the `data:` section of a training recipe (`stentor.train.config.load_config`).
    """

    sources: list[SourceSpec] = field(default_factory=card_sources)
    val_docs: int = 2000
    source_token_budget: int | None = 240_000_000
    max_val_tokens: int | None = None
    clean: bool = True
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.sources:
            raise StentorError("the data config has no sources; add at least one `path` or `hf_id` source")
        if self.val_docs < 0:
            raise StentorError(f"val_docs must be >= 0 (got {self.val_docs})")
        for name in ("source_token_budget", "max_val_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise StentorError(f"{name} must be a positive token count or null for no cap (got {value})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PreparedData:
    """The result of `prepare_data`: memory-mapped token streams plus their metadata."""

    out_dir: Path
    meta: dict[str, Any]
    train_tokens: np.ndarray
    val_tokens: np.ndarray

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> PreparedData:
        out_dir = Path(out_dir)
        meta = _read_meta(out_dir)
        if meta is None:
            raise StentorError(f"no prepared data in {out_dir} (meta.json missing or unreadable); run `stentor data prepare` first")
        if meta.get("format_version") != FORMAT_VERSION:
            raise StentorError(f"{out_dir} holds data format {meta.get('format_version')}, this stentor reads {FORMAT_VERSION}; prepare it again")
        bad = _damaged_fields(meta)
        if bad:
            raise StentorError(f"{out_dir / 'meta.json'} is damaged ({', '.join(bad)}); prepare the data again")
        dtype = np.dtype(meta["dtype"])
        tokens = {}
        for split in ("train", "val"):
            path = out_dir / f"{split}.bin"
            tokens[split] = _map_tokens(path, dtype, meta[f"{split}_tokens"])
            digest = meta.get(f"{split}_sha256")  # data prepared before checksums has none
            if digest is not None and file_sha256(path) != digest:
                raise StentorError(f"{path} does not match the checksum in meta.json: the tokens are damaged; "
                                   "prepare the data again")  # fmt: skip
        return cls(out_dir, meta, tokens["train"], tokens["val"])

    def num_blocks(self, block_size: int, split: str = "train") -> int:
        """How many packed blocks of `block_size` the split gives (the last one may be partial)."""
        n = len(self.train_tokens if split == "train" else self.val_tokens)
        return -(-n // block_size)


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _damaged_fields(meta: dict[str, Any]) -> list[str]:
    """The fields of meta.json that training, `stentor data info` and resuming read, where missing or of the wrong
    type (the file has no checksum of its own, so a flipped byte shows here or nowhere)."""
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    config = meta.get("config")
    config = config if isinstance(config, dict) else {}
    checks = {
        "dtype": meta.get("dtype") in ("uint16", "uint32"),
        **{f"{split}_{what}": count(meta.get(f"{split}_{what}")) for split in ("train", "val") for what in ("tokens", "docs")},
        **{key: count(meta.get(key)) for key in ("vocab_size", "bos_id", "eos_id")},
        "tokenizer_name": isinstance(meta.get("tokenizer_name"), str),
        "budget_reached": isinstance(meta.get("budget_reached"), bool),
        "config.source_token_budget": "source_token_budget" in config
        and (config["source_token_budget"] is None or count(config["source_token_budget"])),
        "config.clean": isinstance(config.get("clean"), bool),
        "config.sources": isinstance(config.get("sources"), list) and all(isinstance(s, dict) for s in config["sources"]),
    }
    return [name for name, ok in checks.items() if not ok]


def _map_tokens(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if not path.is_file() or path.stat().st_size != count * dtype.itemsize:
        raise StentorError(f"{path} is missing or does not hold the {count} tokens meta.json records; prepare the data again")
    if count == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


# --- tokenizer identity -------------------------------------------------------------------------


def _special_ids(tokenizer) -> tuple[int, int]:
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if bos is None or eos is None:
        raise StentorError("the tokenizer needs both a BOS and an EOS token (documents are stored as <s> text </s>); set bos_token and eos_token")
    return int(bos), int(eos)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves disk and page-cache use whenever every id fits in it (Stentor's 8,064 do)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenizer_hash(tokenizer) -> str:
    """A digest of what decides the token ids: vocabulary, merges/model and special tokens."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    vocab = _tokenmonster_vocab(tokenizer)
    if vocab is not None:
        h.update(vocab.to_bytes())
    h.update(json.dumps(_special_ids(tokenizer)).encode())
    return h.hexdigest()


def _tokenmonster_vocab(tokenizer):
    """The TokenMonster `Vocab` behind a StentorTokenizer, else None."""
    from stentor.tokenizer.tokenization_stentor import StentorTokenizer

    return tokenizer.vocab if isinstance(tokenizer, StentorTokenizer) else None


def _encoder(tokenizer):
    """What turns text into ids: a StentorTokenizer's TokenMonster `Vocab` itself (the same ids as
    tokenizer.encode, 2-3x faster, and workers need not import transformers), else the tokenizer."""
    vocab = _tokenmonster_vocab(tokenizer)
    return tokenizer if vocab is None else vocab


def _utf8(text: str) -> bytes:
    """UTF-8 as StentorTokenizer encodes it; only text with lone surrogates needs its slower conversion."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        from stentor.tokenizer.tokenization_stentor import text_to_bytes

        return text_to_bytes(text)


def _encode_texts(encoder, texts: list[str]) -> list[list[int]]:
    from stentor.tokenizer.tokenmonster import Vocab

    if isinstance(encoder, Vocab):  # unlike HF's path, a literal "</s>" in the text stays text, not EOS
        return [encoder.encode(_utf8(t)) for t in texts]
    if callable(encoder):  # HF tokenizers encode a whole list in one (Rust, for fast ones) call
        return encoder(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [encoder.encode(t, add_special_tokens=False) for t in texts]


def _encode_chunk(encoder, texts: list[str], clean: bool, bos: int, eos: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize documents into one flat <s> ids </s> stream; also return each document's length."""
    if clean:
        texts = [clean_text(t) for t in texts]
    docs = [[bos, *ids, eos] for ids in _encode_texts(encoder, texts)]
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    flat = np.fromiter((t for d in docs for t in d), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _worker_payload(encoder) -> tuple[str, bytes]:
    """How a worker rebuilds the encoder: a TokenMonster vocabulary from its bytes, anything else by pickle."""
    from stentor.tokenizer.tokenmonster import Vocab

    if isinstance(encoder, Vocab):
        return "tokenmonster", encoder.to_bytes()
    return "pickle", pickle.dumps(encoder)


# Worker processes hold the encoder in a global, built once by the pool initializer.
_worker_encoder = None


def _init_worker(kind: str, payload: bytes) -> None:
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    if kind == "tokenmonster":
        from stentor.tokenizer import Vocab, use_fast_backend

        _worker_encoder = use_fast_backend(Vocab.from_bytes(payload))  # numba kernels from the on-disk cache
    else:
        _worker_encoder = pickle.loads(payload)  # our own tokenizer, pickled by the parent a moment ago


def _worker_encode(job: tuple[list[str], bool, int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    return _encode_chunk(_worker_encoder, *job)


# --- the document stream -----------------------------------------------------------------------


@dataclass
class _Chunk:
    split: str
    texts: list[str]
    raw_end: int  # raw documents consumed from the mixed stream after this chunk
    doc_end: int  # non-empty documents seen after this chunk


def _chunks(cfg: DataConfig, raw_start: int, doc_start: int) -> Iterator[_Chunk]:
    """Cut the mixed stream into chunks, skipping what an earlier run already tokenized.

    Whitespace-only documents are dropped (they would become bare <s></s>); the first
    `val_docs` remaining documents form the validation split.
    """
    raw, doc = 0, doc_start
    texts: list[str] = []
    split = "val" if doc < cfg.val_docs else "train"
    for text in mixed_documents(cfg.sources, cfg.seed):
        raw += 1
        if raw <= raw_start:
            continue
        if not isinstance(text, str):
            raise StentorError(f"a source yielded a {type(text).__name__} where text was expected; check text_field")
        if not text.strip():
            continue
        doc_split = "val" if doc < cfg.val_docs else "train"
        if texts and doc_split != split:
            yield _Chunk(split, texts, raw - 1, doc)
            texts = []
        split = doc_split
        texts.append(text)
        doc += 1
        if len(texts) == CHUNK_DOCS:
            yield _Chunk(split, texts, raw, doc)
            texts = []
    if doc <= cfg.val_docs:
        raise StentorError(
            f"the sources hold only {doc} non-empty documents, but val_docs={cfg.val_docs} are held out for validation "
            "and training needs at least one more; lower val_docs or add data"
        )
    if texts:
        yield _Chunk(split, texts, raw, doc)


def _encoded_chunks(chunks: Iterator[_Chunk], encoder, job: tuple, pool,
                    window: int) -> Iterator[tuple[_Chunk, tuple[np.ndarray, np.ndarray]]]:
    """Encode chunks in stream order, in `pool` when given, with at most `window` in flight (bounded memory).

    `job` holds the arguments that are the same for every chunk: (clean, bos, eos, dtype name).
    """
    if pool is None:
        for chunk in chunks:
            yield chunk, _encode_chunk(encoder, chunk.texts, *job)
        return
    pending: collections.deque = collections.deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_worker_encode, ((chunk.texts, *job),))))
            if len(pending) >= window:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
    finally:
        # A consumer that stops early (budget reached) must not leave a large task half-written into the pool's
        # pipe: Pool.terminate() then waits forever on its task thread. Let what was submitted finish first.
        for _, result in pending:
            result.wait()


# --- preparation -------------------------------------------------------------------------------


def _fingerprint(cfg: DataConfig, tok_hash: str) -> str:
    """Identity of a preparation: config, tokenizer, format, and the size/mtime of local files."""
    files = []
    for spec in cfg.sources:
        if spec.path is not None:
            files.append([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in resolve_files(spec)])
    blob = json.dumps({"v": FORMAT_VERSION, "cfg": cfg.to_dict(), "tok": tok_hash, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_progress(work: Path, fingerprint: str) -> dict[str, Any]:
    fresh = {"fingerprint": fingerprint, "raw_pos": 0, "doc_pos": 0, "shards": [], "complete": False,
             "tokens": {"train": 0, "val": 0}, "docs": {"train": 0, "val": 0}, "budget_reached": False}
    path = work / "progress.json"
    if path.is_file():
        progress = json.loads(path.read_text())
        if progress.get("fingerprint") == fingerprint:
            log.info("resuming: %d shards already tokenized", len(progress["shards"]))
            return progress
        log.info("discarding partial work for a different config or tokenizer in %s", work)
    shutil.rmtree(work, ignore_errors=True)
    ensure_writable_dir(work)
    return fresh


def _merge(out_dir: Path, work: Path, progress: dict[str, Any]) -> None:
    """Join the shards into train.bin and val.bin inside `work`, then move both into `out_dir`: a merge that
    fails half way (a full disk) leaves the previous preparation, meta.json included, as it was."""
    for split in ("train", "val"):
        with atomic_file(work / f"{split}.bin") as tmp, open(tmp, "wb") as out:
            for shard in progress["shards"]:
                if shard["split"] == split:
                    with open(work / shard["file"], "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the .bin files change now; never leave a meta.json that lies
    for split in ("train", "val"):
        os.replace(work / f"{split}.bin", out_dir / f"{split}.bin")


def prepare_data(cfg: DataConfig, tokenizer, out_dir: str | os.PathLike, num_workers: int | None = None) -> PreparedData:
    """Tokenize the configured sources once into `out_dir` (see the module docstring).

    Returns the existing result untouched when `out_dir/meta.json` was made from the same
    config, tokenizer and local files; resumes a killed run from its last recorded shard.
    `num_workers` defaults to all cores; 0 or 1 tokenizes in this process.
    """
    out_dir = ensure_writable_dir(out_dir)
    bos, eos = _special_ids(tokenizer)
    vocab_size = len(tokenizer)
    dtype = token_dtype(vocab_size)
    tok_hash = tokenizer_hash(tokenizer)
    fingerprint = _fingerprint(cfg, tok_hash)

    meta_path = out_dir / "meta.json"
    existing = _read_meta(out_dir)  # checked before the sources are opened: reuse works offline, even for hub sources
    if existing is not None and existing.get("fingerprint") == fingerprint:
        log.info("%s already holds this preparation; reusing it", out_dir)
        return PreparedData.load(out_dir)
    for spec in cfg.sources:  # fail on bad paths, fields or empty sources before any work
        check_source(spec)

    work = out_dir / WORK_DIR
    progress = _load_progress(work, fingerprint)
    if not progress["complete"]:
        _tokenize(cfg, tokenizer, dtype, work, progress, num_workers)
    _merge(out_dir, work, progress)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "dtype": dtype.name,
        "train_tokens": progress["tokens"]["train"],
        "val_tokens": progress["tokens"]["val"],
        "train_docs": progress["docs"]["train"],
        "val_docs": progress["docs"]["val"],
        "budget_reached": progress["budget_reached"],
        "tokenizer_name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "tokenizer_hash": tok_hash,
        "vocab_size": vocab_size,
        "bos_id": bos,
        "eos_id": eos,
        "config": cfg.to_dict(),
        # So a flipped byte in the tokens is found when a run loads them, not trained on in silence.
        "train_sha256": file_sha256(out_dir / "train.bin"),
        "val_sha256": file_sha256(out_dir / "val.bin"),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    log.info("prepared %d train tokens (%d docs) and %d val tokens (%d docs) in %s",
             meta["train_tokens"], meta["train_docs"], meta["val_tokens"], meta["val_docs"], out_dir)
    return PreparedData.load(out_dir)


def wait_for_prepared(cfg: DataConfig, tokenizer, out_dir: str | os.PathLike, poll_s: float = 1.0) -> PreparedData:
    """What the processes that do not prepare the data do meanwhile: wait for `out_dir/meta.json` with this
    preparation's fingerprint, watching the filesystem rather than sitting in a collective (a barrier times
    out under NCCL's 10 minutes while rank 0 streams and tokenizes hundreds of millions of tokens). If the
    main process dies, the launcher ends this one too."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    fingerprint = _fingerprint(cfg, tokenizer_hash(tokenizer))
    stamp = lambda: meta_path.stat().st_mtime_ns if meta_path.exists() else None  # noqa: E731
    first = stamp()  # a meta.json already there may be an older preparation that the main process replaces
    start = said = time.monotonic()
    while True:
        written = stamp()
        meta = _read_meta(out_dir)
        if meta is not None and meta.get("fingerprint") == fingerprint:
            return PreparedData.load(out_dir)
        if meta is not None and written != first:
            raise StentorError(
                f"the main process prepared other data in {out_dir} than this process expects (another config, "
                "tokenizer or source files): on several machines the sources must be the same files, on a shared filesystem"
            )
        if time.monotonic() - said >= 60:
            said = time.monotonic()
            log.info("waiting for the main process to prepare the data in %s (%.0f min so far)", out_dir, (said - start) / 60)
        time.sleep(poll_s)


def _tokenize(cfg: DataConfig, tokenizer, dtype: np.dtype, work: Path, progress: dict[str, Any], num_workers: int | None) -> None:
    """Encode the remaining chunks in order, writing one shard and one progress record per chunk."""
    caps = {"train": cfg.source_token_budget, "val": cfg.max_val_tokens}
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0))
    encoder = _encoder(tokenizer)
    payload = None
    if num_workers > 1:
        try:
            payload = _worker_payload(encoder)
        except Exception as exc:  # e.g. a tokenizer holding a live subprocess
            log.warning("tokenizer cannot be sent to worker processes (%s); tokenizing in this process", exc)
            num_workers = 0

    start = time.perf_counter()
    start_docs = progress["doc_pos"]
    chunks = _chunks(cfg, progress["raw_pos"], progress["doc_pos"])
    with contextlib.ExitStack() as stack:
        pool = None
        if payload:
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe with tokenizer threads and torch
            pool = stack.enter_context(ctx.Pool(num_workers, initializer=_init_worker, initargs=payload))
        # The bar counts training tokens, so with a budget its total and ETA are exact; validation comes first.
        bar = stack.enter_context(tqdm(total=cfg.source_token_budget, initial=progress["tokens"]["train"], unit="tok",
                                       unit_scale=True, desc="tokenizing"))
        job = (cfg.clean, *_special_ids(tokenizer), dtype.name)
        # Closed before the pool exits (ExitStack unwinds last-in first-out), so no task is in flight then.
        encoded = stack.enter_context(
            contextlib.closing(_encoded_chunks(chunks, encoder, job, pool, window=2 * max(num_workers, 1)))
        )
        for chunk, (flat, lengths) in encoded:
            split, cap = chunk.split, caps[chunk.split]
            have = progress["tokens"][split]
            if cap is not None and have >= cap:  # only val can get here: its cap is reached, skip the rest of it
                flat, lengths = flat[:0], lengths[:0]
            elif cap is not None and have + len(flat) > cap:
                flat = flat[: cap - have]
                lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), len(flat))) + 1]
            name = f"{split}-{len(progress['shards']):06d}.bin"
            atomic_write_bytes(work / name, flat.tobytes())
            progress["shards"].append({"file": name, "split": split, "tokens": len(flat), "docs": len(lengths)})
            progress["tokens"][split] += len(flat)
            progress["docs"][split] += len(lengths)
            progress["raw_pos"], progress["doc_pos"] = chunk.raw_end, chunk.doc_end
            finished = split == "train" and cap is not None and progress["tokens"]["train"] >= cap
            progress["budget_reached"] = finished
            progress["complete"] = finished
            atomic_write_text(work / "progress.json", json.dumps(progress))
            bar.update(len(flat) if split == "train" else 0)
            bar.set_postfix(val_tok=progress["tokens"]["val"],
                            docs_s=f"{(chunk.doc_end - start_docs) / (time.perf_counter() - start):.0f}", refresh=False)
            if finished:
                break
    progress["complete"] = True
    atomic_write_text(work / "progress.json", json.dumps(progress))
