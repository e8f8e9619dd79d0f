"""Files stentor reads and writes: damaged inputs are one clear error, outputs appear whole or not at all.

Checkpoints, exports and vocabulary files are written through here so that a crash, a kill or a
full disk mid-write never leaves a truncated artifact where a good one is expected. The JSON and
text files of model and tokenizer directories are read through here so that a damaged one is a
`StentorError` naming it, never a traceback or a silent default.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stentor.errors import StentorError

# The checksum helpers live in the tokenizer's codec, which must stay self-contained (it ships inside
# model directories as remote code); checkpoints and prepared data use the same ones from here.
from stentor.tokenizer.codec import DamagedFile, file_sha256, verify_checksums, write_checksums  # noqa: F401


def read_text(path: str | os.PathLike, fix: str = "save or download it again") -> str:
    """A UTF-8 text file, or a StentorError naming it (missing, unreadable or not UTF-8) and `fix`."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StentorError(f"{path} is missing; {fix}") from None
    except UnicodeDecodeError as exc:
        raise StentorError(f"{path} is damaged: not UTF-8 text (byte {exc.start}); {fix}") from None
    except OSError as exc:
        raise StentorError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None


def read_json(path: str | os.PathLike, fix: str = "save or download it again", kind: type = dict):
    """A JSON file holding a `kind` (an object unless told), or a StentorError naming it and `fix`."""
    text = read_text(path, fix)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StentorError(f"{path} is damaged: not valid JSON ({str(exc)[:80]}); {fix}") from None
    if not isinstance(data, kind):
        raise StentorError(f"{path} is damaged: it holds a JSON {type(data).__name__}, not a {kind.__name__}; {fix}")
    return data


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) and check we can write into it, or raise a clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise StentorError(f"cannot write to {path}: {exc.strerror or exc}; choose another output path") from None
    return path


def _default_mode(directory: bool) -> int:
    """What a plain open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# How the writers that hide errno (torch's zip writer, safetensors' Rust IO) word a full disk.
_FULL_WORDS = ("No space left", "File too large", "Disk quota", "FileTooLarge", "StorageFull", "QuotaExceeded")


def _out_of_space(exc: BaseException, partial: Path) -> bool:
    """Whether a failed write ran out of room: disk full, quota, or the process's file-size limit.

    Python's own IO says so in errno; torch's zip writer only says "unexpected pos", so past the
    errno and the wording the state of the disk decides: a partial file at the size limit, or a
    filesystem with (almost) no space left.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if any(word in str(seen) for word in _FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(exc, Exception) or isinstance(exc, StentorError):  # a kill, Ctrl-C or our own check
        return False
    files = [partial] if partial.is_file() else [f for f in partial.rglob("*") if f.is_file()]
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and any(f.stat().st_size >= limit for f in files):
        return True
    with contextlib.suppress(OSError):
        return shutil.disk_usage(partial.parent).free < 1 << 20
    return False


def _no_room(path: Path) -> StentorError:
    return StentorError(
        f"cannot write {path}: no space left (the disk is full or a file-size limit was reached); "
        "nothing was changed there; free some space or write somewhere else"
    )


@contextlib.contextmanager
def _undone_on_failure(path: Path, partial: Path) -> Iterator[None]:
    """Run the write; if it fails, remove the partial (file or directory), and say a full disk in one line
    naming `path`."""
    try:
        yield
    except BaseException as exc:
        full = _out_of_space(exc, partial)
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        if full:
            raise _no_room(path) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    parent = ensure_writable_dir(path.parent if str(path.parent) else ".")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp_path = Path(tmp)
    with _undone_on_failure(path, tmp_path):
        os.chmod(tmp, _default_mode(directory=False))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _fsync_dir(parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    For writers that insist on a filename (safetensors, gguf, onnx).
    """
    path = Path(path)
    parent = ensure_writable_dir(path.parent if str(path.parent) else ".")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    with _undone_on_failure(path, tmp_path):
        os.chmod(tmp_path, _default_mode(directory=False))
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    _fsync_dir(parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path`.

    An existing `path` is moved aside first and removed only after the new one is in
    place, so at every instant either the old or the new directory exists whole.
    """
    path = Path(path)
    parent = ensure_writable_dir(path.parent if str(path.parent) else ".")
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp"))
    with _undone_on_failure(path, tmp):
        os.chmod(tmp, _default_mode(directory=True))
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".old"))
            old.rmdir()
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
