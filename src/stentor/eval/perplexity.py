"""Perplexity and bits per byte of a causal LM on a text corpus.

Documents are encoded the way training stores them: BOS text EOS for each,
concatenated into one stream. Two ways to score the stream:

* blocks (default): non-overlapping windows of `block_size` tokens, each scored
  fully, as the training loop's eval does (the first token of a block has no context
  and is not scored);
* sliding (`stride < block_size`): windows start every `stride` tokens and each token
  is scored once, by the window that gives it the most context (up to `block_size`).

`stride == block_size` is the blocks mode, by construction. Bits per byte divides the
total nats by ln 2 and by the UTF-8 bytes of the text that was tokenized, so it compares
across tokenizers; perplexity does not.
"""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from stentor.errors import StentorError
from stentor.eval.loading import start_token_id

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Corpus:
    documents: list[str]
    name: str  # what was read, for reports: file names or the dataset id
    dataset_id: str | None = None  # the hub id when it came from the hub


def _read_file(path: Path, text_field: str | None) -> list[str]:
    # Binary read + strict UTF-8 decode: no newline translation, so CRLF text stays byte-exact.
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StentorError(f"{path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8 first") from None
    if not text.strip():
        raise StentorError(f"{path} is empty; pass a file with text to evaluate")
    if text_field is None:
        return [text]
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StentorError(f"{path}:{lineno} is not valid JSON ({exc.msg}); --text-field expects JSON Lines") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise StentorError(f"{path}:{lineno} has no string field {text_field!r}; pick the field with --text-field")
        if row[text_field]:
            docs.append(row[text_field])
    return docs


def _expand(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise StentorError(f"directory {source} has no files to evaluate")
        return files
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise StentorError(f"the pattern {source} matches no files")
        return files
    return []


def _load_hub_dataset(dataset_id: str, config: str | None, split: str, text_field: str) -> list[str]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(
            f"{dataset_id} is not a local path and could not be loaded from the Hugging Face hub ({first}); "
            "if you are offline, pass local text files instead"
        ) from None
    if text_field not in ds.column_names:
        raise StentorError(f"{dataset_id} has no column {text_field!r} (columns: {', '.join(ds.column_names)})")
    return [t for t in ds[text_field] if t]


def read_corpus(
    sources: Sequence[str],
    text_field: str | None = None,
    hf_config: str | None = None,
    hf_split: str = "test",
) -> Corpus:
    """Text files (one document each), JSON Lines (`text_field`), dirs, globs, or one hub dataset id."""
    if not sources:
        raise StentorError("no data given; pass text files, a directory, a glob or a hub dataset id")
    docs: list[str] = []
    names: list[str] = []
    for source in sources:
        files = _expand(source)
        if files:
            for f in files:
                docs += _read_file(f, text_field)
                names.append(f.name)
            continue
        if not _HF_ID.match(source):
            raise StentorError(f"{source} does not exist; pass an existing file, directory or glob")
        if len(sources) > 1:
            raise StentorError(f"{source} looks like a hub dataset id; evaluate one hub dataset at a time")
        docs = _load_hub_dataset(source, hf_config, hf_split, text_field or "text")
        return Corpus(docs, f"{source}:{hf_config or 'default'}:{hf_split}" if hf_config else source, source)
    if not docs:
        raise StentorError(f"no non-empty documents in {', '.join(sources)}")
    return Corpus(docs, ", ".join(names))


@dataclass(frozen=True)
class EncodedCorpus:
    ids: list[int]  # BOS doc1 EOS BOS doc2 EOS ...
    text_tokens: int  # ids minus the BOS/EOS we added
    text_bytes: int  # UTF-8 bytes of the text behind those tokens
    text_chars: int
    documents: int


def encode_corpus(tokenizer, documents: Sequence[str], max_tokens: int | None = None) -> EncodedCorpus:
    """Encode documents as training stores them: BOS text EOS, one after another.

    With `max_tokens` the stream stops there; a document cut short gets no EOS and
    counts the bytes of its kept tokens, decoded.
    """
    bos = start_token_id(tokenizer)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    budget = max_tokens if max_tokens is not None else float("inf")
    ids: list[int] = []
    text_tokens = text_bytes = text_chars = n_docs = 0
    for doc in documents:
        if len(ids) + 1 >= budget:
            break
        body = tokenizer(doc, add_special_tokens=False, verbose=False).input_ids
        tail = eos
        if len(ids) + 1 + len(body) + len(eos) > budget:
            body = body[: int(budget) - len(ids) - 1]
            doc, tail = tokenizer.decode(body), []
        ids += [bos, *body, *tail]
        text_tokens += len(body)
        text_bytes += len(doc.encode("utf-8"))
        text_chars += len(doc)
        n_docs += 1
    if len(ids) < 2:
        raise StentorError("the text encodes to fewer than 2 tokens; there is nothing to score (raise --max-tokens?)")
    return EncodedCorpus(ids, text_tokens, text_bytes, text_chars, n_docs)


@dataclass(frozen=True)
class PerplexityResult:
    data: str
    mode: str  # "blocks" or "sliding"
    block_size: int
    stride: int
    documents: int
    tokens: int  # the whole stream, BOS/EOS included
    scored_tokens: int  # predictions that were scored
    text_tokens: int
    text_bytes: int
    text_chars: int
    total_nats: float
    dataset_id: str | None = None  # the hub id when the text came from the hub
    precision: str = "fp32"  # what the layers' matmuls ran in

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood, nats per scored token."""
        return self.total_nats / self.scored_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_byte(self) -> float:
        return self.total_nats / math.log(2) / self.text_bytes

    @property
    def chars_per_token(self) -> float:
        return self.text_chars / max(self.text_tokens, 1)

    def to_dict(self) -> dict:
        derived = ("loss", "perplexity", "bits_per_token", "bits_per_byte", "chars_per_token")
        return {**asdict(self), **{k: getattr(self, k) for k in derived}}


def windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window: positions [first_scored, end) are scored, each exactly once."""
    out = []
    prev_end = 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + block_size, n_tokens)
        first = max(begin + 1, prev_end)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return out


def score_stream(
    model, ids: Sequence[int], block_size: int, stride: int, batch_size: int = 8, progress: bool = True,
    precision: str = "fp32",
) -> tuple[float, int]:
    """Total nats and number of scored tokens over the windows of `ids` (`precision` fp32, bf16 or auto)."""
    from stentor.eval.scoring import Scorer, Tree, resolve_precision

    wins = windows(len(ids), block_size, stride)
    trees = [Tree(ids[b:e], (), f - b) for b, e, f in wins]
    scorer = Scorer(model, resolve_precision(precision, model), batch_size)
    scores = scorer.score(trees, progress, "perplexity")
    return -sum(s.trunk for s in scores), sum(e - f for _, e, f in wins)


def evaluate_perplexity(
    model,
    tokenizer,
    corpus: Corpus,
    block_size: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    precision: str = "fp32",
) -> PerplexityResult:
    """Score `corpus` in blocks (default) or with a sliding window (`stride` < `block_size`).

    `precision` bf16 (or auto, where the CPU has native bf16) runs the layers' matmuls in bf16:
    the fast mode, whose perplexity agrees with fp32's to about 4 significant digits."""
    context = getattr(model.config, "max_position_embeddings", None)
    block_size = block_size or context or 1024
    if block_size < 2:
        raise StentorError(f"--block-size must be at least 2, got {block_size}")
    if context and block_size > context:
        raise StentorError(f"--block-size {block_size} exceeds the model's context of {context} tokens; use at most {context}")
    stride = stride or block_size
    if not 1 <= stride <= block_size:
        raise StentorError(f"--stride must be between 1 and the block size {block_size}, got {stride}")
    if batch_size < 1:
        raise StentorError(f"--batch-size must be positive, got {batch_size}")
    if max_tokens is not None and max_tokens < 2:
        raise StentorError(f"--max-tokens must be at least 2, got {max_tokens}")
    enc = encode_corpus(tokenizer, corpus.documents, max_tokens)
    from stentor.eval.scoring import resolve_precision

    precision = resolve_precision(precision, model)
    total, scored = score_stream(model, enc.ids, block_size, stride, batch_size, progress, precision)
    return PerplexityResult(
        data=corpus.name,
        mode="blocks" if stride == block_size else "sliding",
        block_size=block_size,
        stride=stride,
        documents=enc.documents,
        tokens=len(enc.ids),
        scored_tokens=scored,
        text_tokens=enc.text_tokens,
        text_bytes=enc.text_bytes,
        text_chars=enc.text_chars,
        total_nats=total,
        dataset_id=corpus.dataset_id,
        precision=precision,
    )
