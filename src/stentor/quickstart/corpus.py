"""The quickstart's built-in corpus: English prose every Python install carries.

The docstrings of the Python standard library are real English text written by people, present on every machine
that can run stentor, and are read here with `ast` (nothing is imported or executed). Documents are the docstrings
of a module and of its classes and functions, in a fixed order, so the corpus is the same on every run of the same
Python version.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MIN_CHARS = 200  # one-line docstrings teach little; keep paragraphs


def _docstrings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= MIN_CHARS:
                yield doc


def stdlib_documents(max_chars: int | None = None) -> list[str]:
    """Docstrings of the standard library's pure-Python modules (tests and third-party packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "ensurepip", "turtledemo"}
    docs: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for doc in _docstrings(tree):
            docs.append(doc)
            total += len(doc)
            if max_chars is not None and total >= max_chars:
                return docs
    return docs


def write_jsonl(out_file: Path, docs: list[str]) -> Path:
    """Documents as JSON lines ({"text": ...}), written atomically: the form every stentor data reader takes."""
    import json

    from stentor.fileio import atomic_write_text

    return atomic_write_text(out_file, "".join(json.dumps({"text": d}) + "\n" for d in docs))
