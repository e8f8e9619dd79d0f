"""The card's text normalisation, applied to every document before tokenization."""

from __future__ import annotations

import unicodedata


def clean_text(text: str) -> str:
    """NFKC-normalise, strip each line, drop empty lines, join with spaces, collapse whitespace.

    Exactly the card's function: one document becomes one line of single-spaced text, so
    visually equal Unicode and stray whitespace always tokenize the same way.
    """
    text = unicodedata.normalize("NFKC", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(" ".join(lines).split())
