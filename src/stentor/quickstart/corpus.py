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


def _stdlib_trees() -> Iterator[tuple[str, ast.Module]]:
    """(module name, parsed source) of the standard library's pure-Python modules, in a fixed order
    (tests and third-party packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "ensurepip", "turtledemo"}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if skip.intersection(parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        yield ".".join(p for p in parts if p != "__init__"), tree


def stdlib_documents(max_chars: int | None = None) -> list[str]:
    """Docstrings of the standard library's pure-Python modules."""
    docs: list[str] = []
    total = 0
    for _, tree in _stdlib_trees():
        for doc in _docstrings(tree):
            docs.append(doc)
            total += len(doc)
            if max_chars is not None and total >= max_chars:
                return docs
    return docs


def stdlib_conversations() -> list[dict]:
    """A small chat set for `stentor finetune` (configs/finetune-chat.yaml): a question about each public
    function and class of the standard library, answered by the first paragraph of its docstring."""
    chats = []
    for module, tree in _stdlib_trees():
        if module.startswith("_") or "._" in module:
            continue
        for node in tree.body:
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node, clean=True)
            answer = " ".join(doc.split("\n\n")[0].split()) if doc else ""
            if 40 <= len(answer) <= 400:
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                chats.append({"messages": [{"role": "user", "content": f"What does the {kind} {module}.{node.name} do?"},
                                           {"role": "assistant", "content": answer}]})  # fmt: skip
    return chats


def reference_documents(chunk_chars: int = 2000) -> list[str]:
    """The Python Language Reference as it ships with every Python (pydoc's topics), in chunks of about
    `chunk_chars` on paragraph boundaries: text of a new domain for continued pretraining
    (configs/finetune-text.yaml)."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        chunk = ""
        for paragraph in topics[name].split("\n\n"):
            chunk = f"{chunk}\n\n{paragraph}" if chunk else paragraph
            if len(chunk) >= chunk_chars:
                docs.append(chunk)
                chunk = ""
        if chunk.strip():
            docs.append(chunk)
    return docs


def write_jsonl(out_file: Path, docs: list[str] | list[dict]) -> Path:
    """Documents as JSON lines ({"text": ...}; records as they are), written atomically: the form every
    stentor data reader takes."""
    import json

    from stentor.fileio import atomic_write_text

    lines = (json.dumps(d if isinstance(d, dict) else {"text": d}) + "\n" for d in docs)
    return atomic_write_text(out_file, "".join(lines))
