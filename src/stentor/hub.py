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
