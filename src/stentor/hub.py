"""Is the Hugging Face hub out of reach? Asked once, so offline users get stentor's one-line error at once
instead of huggingface_hub's five retries with back-off (~25 s of warnings) before it."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0


@functools.cache
def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set or the hub endpoint cannot be connected to (DNS or TCP)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=CONNECT_TIMEOUT_S):
            return False
    except OSError:
        return True


# Weights stentor never reads (pickles and other runtimes' formats) are not downloaded.
_SKIP = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.py"]


def local_snapshot(repo_id: str):
    """A hub model id as a local directory: downloaded when the hub is reachable, else the local HF cache's copy."""
    import logging
    from pathlib import Path

    from huggingface_hub import snapshot_download

    from stentor.errors import StentorError

    offline = hub_offline()
    try:
        path = Path(snapshot_download(repo_id, local_files_only=offline, ignore_patterns=_SKIP))
    except Exception as exc:  # huggingface_hub raises many types (LocalEntryNotFoundError, RepositoryNotFoundError, ...)
        if offline:
            raise StentorError(
                f"{repo_id} is not in the local Hugging Face cache and the hub is out of reach; download it while "
                f"online (`hf download {repo_id}`) or pass a local directory"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StentorError(f"cannot download {repo_id} from the Hugging Face hub ({first}); check the id") from None
    if offline:
        logging.getLogger(__name__).info("offline: %s from the local Hugging Face cache (%s)", repo_id, path)
    return path


def local_path(spec: str):
    """Where `spec` lives on disk: an existing path as it is, a hub id (ORG/NAME) as its `local_snapshot`;
    anything else unchanged, for the caller to say what is missing."""
    from pathlib import Path

    from stentor.model.loading import looks_like_hub_id

    path = Path(spec).expanduser()
    return local_snapshot(spec) if not path.exists() and looks_like_hub_id(spec) else path
