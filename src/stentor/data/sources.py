"""Where documents come from: local files (txt, jsonl, parquet, csv) or Hugging Face datasets.

A source is read as a stream of raw document strings; `mixed_documents` interleaves
several sources by weight with a seeded generator, so the same config always yields the
same document order (which is what makes the validation split and resume exact).
"""

from __future__ import annotations

import csv
import glob
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stentor.errors import StentorError

SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
TXT_MODES = ("file", "lines", "paragraphs")


@dataclass
class SourceSpec:
    """One document source: a local `path` (file, directory or glob) or a hub dataset `hf_id`.

    `text_field` names the column holding the text (jsonl, parquet, csv, hub datasets);
    `weight` is the relative share of documents drawn from this source when mixing.
    `txt_mode` says what one document is in a .txt file: the whole file, each line,
    or each blank-line-separated paragraph.
    """

    path: str | None = None
    hf_id: str | None = None
    hf_config: str | None = None
    split: str = "train"
    text_field: str = "text"
    weight: float = 1.0
    txt_mode: str = "file"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hf_id is None):
            raise StentorError(f"a data source needs exactly one of `path` or `hf_id` (got path={self.path!r}, hf_id={self.hf_id!r})")
        if not self.weight > 0:
            raise StentorError(f"source {self.name}: weight must be > 0 (got {self.weight}); drop the source instead")
        if self.txt_mode not in TXT_MODES:
            raise StentorError(f"source {self.name}: txt_mode must be one of {', '.join(TXT_MODES)} (got {self.txt_mode!r})")

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"hf:{self.hf_id}"


def resolve_files(spec: SourceSpec) -> list[Path]:
    """The files of a local source in a fixed (sorted) order; directories are searched recursively."""
    path = Path(spec.path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    elif glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    else:
        raise StentorError(f"data source {spec.path} does not exist; give a file, a directory or a glob like 'data/*.jsonl'")
    if not files:
        raise StentorError(f"data source {spec.path} matches no {'/'.join(sorted(SUFFIXES))} files")
    kinds = sorted({SUFFIXES.get(f.suffix.lower(), f.suffix) for f in files})
    if path.is_dir() and len(kinds) > 1:  # e.g. a README.txt beside the .jsonl shards must not become a document
        raise StentorError(f"directory {spec.path} holds {' and '.join(kinds)} files; pick one kind with a glob like '{path}/**/*.jsonl'")
    for f in files:
        if f.suffix.lower() not in SUFFIXES:
            raise StentorError(f"cannot read {f}: unknown file type {f.suffix!r}; use one of {', '.join(sorted(SUFFIXES))}")
    return files


def _missing_field(spec: SourceSpec, where: str, fields: list[str]) -> StentorError:
    return StentorError(
        f"{where} has no field {spec.text_field!r}; available fields: {', '.join(map(str, fields)) or '(none)'}. "
        "Set text_field to the one holding the text"
    )


def _read_txt(path: Path, mode: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:  # universal newlines: \r\n and \r end lines too
        if mode == "file":
            yield f.read()
            return
        paragraph: list[str] = []
        for line in f:
            line = line.rstrip("\n")
            if mode == "lines":
                yield line
            elif line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
        if paragraph:
            yield "\n".join(paragraph)


def _read_jsonl(path: Path, spec: SourceSpec) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:  # stray invalid bytes become U+FFFD, as in .txt
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StentorError(f"{path}:{lineno} is not valid JSON ({exc.msg}); each line must be one JSON object") from None
            if not isinstance(record, dict) or spec.text_field not in record:
                raise _missing_field(spec, f"{path}:{lineno}", list(record) if isinstance(record, dict) else [])
            yield record[spec.text_field] or ""


def _read_csv(path: Path, spec: SourceSpec) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)  # documents are long; the default 128 KiB cap would reject them
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if spec.text_field not in (reader.fieldnames or []):
            raise _missing_field(spec, str(path), list(reader.fieldnames or []))
        for row in reader:
            yield row[spec.text_field] or ""


def _read_parquet(path: Path, spec: SourceSpec) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if spec.text_field not in pf.schema_arrow.names:
        raise _missing_field(spec, str(path), pf.schema_arrow.names)
    for batch in pf.iter_batches(columns=[spec.text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield text or ""


def _read_hub(spec: SourceSpec) -> Iterator[str]:
    """Stream a hub dataset; every failure to reach it becomes one clear StentorError."""
    import datasets

    from stentor.hub import hub_offline

    try:
        if hub_offline():
            raise ConnectionError("the Hugging Face hub is unreachable")
        ds = datasets.load_dataset(spec.hf_id, spec.hf_config, split=spec.split, streaming=True)
        first = True
        for record in ds:
            if first and spec.text_field not in record:
                raise _missing_field(spec, f"hub dataset {spec.hf_id}", list(record))
            first = False
            yield record[spec.text_field] or ""
    except StentorError:
        raise
    except Exception as exc:  # network, auth and not-found errors all surface here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(
            f"cannot stream hub dataset {spec.hf_id!r} ({type(exc).__name__}: {reason[:200]}). "
            "If the Hugging Face hub is unreachable (offline), download the data where it is reachable "
            f"(`hf download {spec.hf_id} --repo-type dataset --local-dir DIR`) and give its files as a local `path` source"
        ) from None


def iter_documents(spec: SourceSpec) -> Iterator[str]:
    """Raw documents of one source, in file order then record order."""
    if spec.hf_id is not None:
        yield from _read_hub(spec)
        return
    for path in resolve_files(spec):
        kind = SUFFIXES[path.suffix.lower()]
        if kind == "txt":
            yield from _read_txt(path, spec.txt_mode)
        elif kind == "jsonl":
            yield from _read_jsonl(path, spec)
        elif kind == "csv":
            yield from _read_csv(path, spec)
        else:
            yield from _read_parquet(path, spec)


def check_source(spec: SourceSpec) -> None:
    """Open a source and read its first document, so bad paths and fields fail before any work."""
    for _ in iter_documents(spec):
        return
    raise StentorError(f"data source {spec.name} contains no documents; check the path and txt_mode")


def mixed_documents(sources: list[SourceSpec], seed: int) -> Iterator[str]:
    """Interleave sources document by document: each next document comes from a source drawn
    with probability proportional to its weight (seeded); exhausted sources drop out."""
    streams = [iter_documents(s) for s in sources]
    weights = [s.weight for s in sources]
    rng = random.Random(seed)
    while streams:
        i = rng.choices(range(len(streams)), weights=weights)[0] if len(streams) > 1 else 0
        try:
            yield next(streams[i])
        except StopIteration:
            del streams[i], weights[i]
