"""The Hugging Face side of the tokenizer, for the rest of stentor.

`StentorTokenizer` itself lives in `tokenization_stentor.py` (self-contained, so saved
directories load without stentor); this module adds what needs stentor: loading any
tokenizer path with clear errors, the numba fast path, and atomic saving.
"""

from __future__ import annotations

import os
from pathlib import Path

from stentor.errors import StentorError
from stentor.fileio import read_json, read_text
from stentor.tokenizer.tokenization_stentor import CHAT_TEMPLATE, VOCAB_FILE, StentorTokenizer

__all__ = ["CHAT_TEMPLATE", "StentorTokenizer", "load_tokenizer", "save_tokenizer", "tokenizer_from_vocab"]


def tokenizer_from_vocab(spec: str | os.PathLike, **kwargs) -> StentorTokenizer:
    """A StentorTokenizer over a `.vocab` path or an official vocabulary name."""
    from stentor.tokenizer.hub import open_vocab

    return StentorTokenizer.from_vocab(open_vocab(spec), **kwargs)


def _is_stentor_dir(path: Path) -> bool:
    config = path / "tokenizer_config.json"
    if not (path / VOCAB_FILE).is_file() or not config.is_file():
        return False
    return read_json(config).get("tokenizer_class") == StentorTokenizer.__name__  # damaged: one clear error


def load_tokenizer(spec: str | os.PathLike, **kwargs):
    """Any tokenizer stentor can use, from a directory, a `.vocab` file, a vocabulary name or a hub id.

    A directory saved by StentorTokenizer loads with the installed class (no trust_remote_code);
    a `.vocab` file or an official TokenMonster name becomes a StentorTokenizer; anything else
    goes to `AutoTokenizer.from_pretrained` (any HF tokenizer, local or on the hub).
    """
    from stentor.tokenizer import use_fast_backend
    from stentor.tokenizer.hub import is_official_name

    from stentor.hub import local_path

    spec = os.fspath(spec)
    path = Path(spec).expanduser() if is_official_name(spec) else local_path(spec)  # a hub repo: its local snapshot
    spec = str(path) if path.exists() else spec
    if path.is_dir() and _is_stentor_dir(path):
        from stentor.tokenizer.tokenmonster import VocabError

        from stentor.tokenizer.codec import DamagedFile, verify_checksums

        try:
            verify_checksums(path)
        except DamagedFile as exc:
            raise StentorError(f"{exc}; save the tokenizer or download the model again") from None
        if (path / "chat_template.jinja").exists():
            read_text(path / "chat_template.jinja")  # damaged: named here, not deep inside transformers
        try:
            tokenizer = StentorTokenizer.from_pretrained(str(path), **kwargs)
        except VocabError as exc:
            raise StentorError(f"{path / VOCAB_FILE} is not a valid TokenMonster vocabulary: {exc}") from None
        use_fast_backend(tokenizer.vocab)
        return tokenizer
    if path.is_dir():
        from stentor.tokenizer.foreign import foreign_vocab, load_foreign_tokenizer

        found = foreign_vocab(path)
        if found is not None:  # e.g. the released StentorLabs checkpoints: their adapter is not run
            tokenizer = load_foreign_tokenizer(path, found, **kwargs)
            use_fast_backend(tokenizer.vocab)
            return tokenizer
    if path.is_file() or spec.endswith(".vocab") or (not path.exists() and is_official_name(spec)):
        return tokenizer_from_vocab(spec, **kwargs)
    return _auto_tokenizer(spec, **kwargs)


def _auto_tokenizer(spec: str, **kwargs):
    from transformers import AutoTokenizer

    from stentor.hub import hub_offline

    if not Path(spec).exists() and hub_offline():
        kwargs.setdefault("local_files_only", True)  # offline: the HF cache or a quick error, not retries
    try:
        return AutoTokenizer.from_pretrained(spec, **kwargs)
    except OSError as exc:
        where = "the directory has no tokenizer files" if Path(spec).is_dir() else "offline, or no such hub repository"
        raise StentorError(
            f"cannot load a tokenizer from {spec!r} ({where}): pass a tokenizer directory, a TokenMonster "
            f".vocab file, or a hub id that is in the local Hugging Face cache ({type(exc).__name__})"
        ) from None
    except ValueError as exc:
        raise StentorError(f"cannot load a tokenizer from {spec!r}: {str(exc).splitlines()[0]}") from None


def save_tokenizer(tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write a complete tokenizer directory atomically (code files included for StentorTokenizer)."""
    from stentor.fileio import atomic_dir

    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
