"""Official prebuilt TokenMonster vocabularies: resolve a name or a path to a loaded `Vocab`.

Everywhere stentor takes a vocabulary it accepts either a local `.vocab` path or an official
name such as `english-8000-strict-nocapcode-v1` (the card's). A name is looked up in
`$STENTOR_VOCAB_DIR`, then in the Hugging Face cache, then downloaded from the
`alasdairforsythe/tokenmonster` hub repository (file `vocabs/NAME.vocab`; data only, no code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from stentor.errors import StentorError

HUB_REPO = "alasdairforsythe/tokenmonster"
VOCAB_DIR_ENV = "STENTOR_VOCAB_DIR"
CARD_VOCAB = "english-8000-strict-nocapcode-v1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Official names read LANGUAGE-SIZE-MODE[-nocapcode]-vN, e.g. english-8000-strict-nocapcode-v1.
_OFFICIAL = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*-\d+-(?:unfiltered|clean|balanced|consistent|strict)(?:-[a-z]+)*-v\d+")


def is_official_name(spec: str) -> bool:
    return bool(_OFFICIAL.fullmatch(spec))


def vocab_url(name: str) -> str:
    return f"https://huggingface.co/{HUB_REPO}/resolve/main/vocabs/{name}.vocab"


def _is_path_like(spec: str) -> bool:
    return spec.endswith(".vocab") or "/" in spec or os.sep in spec or spec.startswith(".")


def _missing(name: str, reason: str) -> StentorError:
    return StentorError(
        f"vocabulary {name!r} is not available ({reason}): download {vocab_url(name)} "
        f"and put it in the folder named by ${VOCAB_DIR_ENV}, or pass --vocab PATH/{name}.vocab"
    )


def resolve_vocab(spec: str | os.PathLike, download: bool = True) -> Path:
    """Path of a vocabulary given as a local path or an official name (see the module docstring)."""
    spec = os.fspath(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise StentorError(f"{path} is a directory; pass a TokenMonster .vocab file")
    if _is_path_like(spec):
        raise StentorError(f"vocabulary file {path} does not exist; check the path, or give an official name")
    if not _NAME.fullmatch(spec):
        raise StentorError(f"{spec!r} is neither a .vocab file nor a vocabulary name (letters, digits, . _ -)")
    env_dir = os.environ.get(VOCAB_DIR_ENV)
    if env_dir and (Path(env_dir) / f"{spec}.vocab").is_file():
        return Path(env_dir) / f"{spec}.vocab"

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(HUB_REPO, f"vocabs/{spec}.vocab", local_files_only=True))
    except (OSError, EntryNotFoundError):
        if not download:
            raise _missing(spec, "not in the Hugging Face cache") from None
    from stentor.hub import hub_offline

    if hub_offline():
        raise _missing(spec, "offline or hub unreachable")
    try:
        return Path(hf_hub_download(HUB_REPO, f"vocabs/{spec}.vocab"))
    except (OSError, EntryNotFoundError) as exc:
        reason = (
            "no such file on the hub" if isinstance(exc, RemoteEntryNotFoundError) else "offline or hub unreachable"
        )
        raise _missing(spec, reason) from None


def open_vocab(spec: str | os.PathLike, download: bool = True):
    """Load a vocabulary (path or official name); a corrupt file becomes one clear StentorError."""
    from stentor.tokenizer import load_vocab
    from stentor.tokenizer.tokenmonster import VocabError

    path = resolve_vocab(spec, download=download)
    try:
        return load_vocab(path)
    except VocabError as exc:
        raise StentorError(f"{path} is not a valid TokenMonster vocabulary: {exc}") from None
    except OSError as exc:
        raise StentorError(f"cannot read {path}: {exc.strerror or exc}") from None


def get_vocab(name: str) -> Path:
    """`stentor vocab get NAME`: download an official vocabulary into the HF cache and check it loads."""
    if not _NAME.fullmatch(name) or name.endswith(".vocab"):
        raise StentorError(f"{name!r} is not a vocabulary name; use e.g. {CARD_VOCAB} (without .vocab)")
    path = resolve_vocab(name, download=True)
    open_vocab(path)
    return path
