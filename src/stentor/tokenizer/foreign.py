"""Checkpoints whose tokenizer is another project's TokenMonster adapter (the released StentorLabs models).

Such a directory ships a TokenMonster `.vocab`, a remote-code adapter that wraps the `tokenmonster`
package (which downloads a Go binary at run time), and the special tokens in its JSON files. stentor
never runs the adapter: it finds the vocabulary by its content, reads the special-token ids from the
directory, checks that the files agree, and gives a `StentorTokenizer` with exactly those ids.

Files and fields read: `tokenizer_config.json` (`added_tokens_decoder`, `bos_token`, `eos_token`,
`unk_token`, `pad_token`, `tokenizer_class`, `auto_map`, `chat_template`), `special_tokens_map.json`
(the same four roles), `config.json` and `generation_config.json` (`bos_token_id`, `eos_token_id`,
`pad_token_id`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stentor.errors import StentorError

log = logging.getLogger(__name__)

ROLES = ("bos", "eos", "unk", "pad")
_NOT_VOCAB = {".json", ".safetensors", ".py", ".md", ".txt", ".jinja", ".bin", ".pt", ".gguf", ".onnx", ".png"}
_MAX_VOCAB_BYTES = 64 << 20


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StentorError(f"{path} is not valid JSON ({exc}); re-download the checkpoint") from None
    return data if isinstance(data, dict) else {}


def _name(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


def find_vocab(path: Path):
    """(file, parsed `Vocab`) of the directory's TokenMonster vocabulary, recognised by parsing, whatever its
    file name; None when it has none."""
    from stentor.tokenizer.tokenmonster import Vocab, VocabError

    found: dict[bytes, tuple[Path, Vocab]] = {}
    for candidate in sorted(p for p in path.iterdir() if p.is_file()):
        if candidate.suffix.lower() in _NOT_VOCAB or candidate.stat().st_size > _MAX_VOCAB_BYTES:
            continue
        data = candidate.read_bytes()
        try:
            found.setdefault(data, (candidate, Vocab.from_bytes(data, candidate.name)))
        except (VocabError, ValueError, IndexError):
            continue
    if len(found) > 1:
        names = ", ".join(p.name for p, _ in found.values())
        raise StentorError(f"{path} holds {len(found)} different TokenMonster vocabularies ({names}); "
                           "keep the one the model was trained with")  # fmt: skip
    return next(iter(found.values()), None)


def foreign_vocab(path: Path):
    """For a model dir with a tokenizer config that is not ours, no `tokenizer.json`, and a TokenMonster
    vocabulary: that (file, `Vocab`); else None."""
    config = _json(path / "tokenizer_config.json")
    if not config or config.get("tokenizer_class") == "StentorTokenizer" or (path / "tokenizer.json").is_file():
        return None
    return find_vocab(path)


def read_special_ids(path: Path, base: int) -> tuple[dict[int, str], dict[str, str | None]]:
    """(id -> name of every added token, role -> name), cross-checked across the directory's files."""
    config = _json(path / "tokenizer_config.json")
    added: dict[int, str] = {}
    for key, token in (config.get("added_tokens_decoder") or {}).items():
        name = _name(token)
        if not str(key).isdigit() or name is None:
            raise StentorError(f"{path / 'tokenizer_config.json'}: added_tokens_decoder entry {key!r} is not id -> token")
        added[int(key)] = name
    names: dict[str, tuple[str, str]] = {}  # role -> (name, where it was read)
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        data = _json(path / file)
        for role in ROLES:
            name = _name(data.get(f"{role}_token"))
            if name is None:
                continue
            if role in names and names[role][0] != name:
                raise StentorError(f"{path}: {role}_token is {names[role][0]!r} in {names[role][1]} but {name!r} in {file}")
            names.setdefault(role, (name, file))
    ids: dict[str, tuple[int, str]] = {}
    for file in ("config.json", "generation_config.json"):
        data = _json(path / file)
        for role in ("bos", "eos", "pad"):
            value = data.get(f"{role}_token_id")
            if isinstance(value, list):  # generation_config may list several EOS ids; the first is the tokenizer's
                value = value[0] if value else None
            if value is None:
                continue
            if role in ids and ids[role][0] != value:
                raise StentorError(f"{path}: {role}_token_id is {ids[role][0]} in {ids[role][1]} but {value} in {file}")
            ids.setdefault(role, (int(value), file))
    for role, (token_id, file) in ids.items():
        if role not in names:
            if token_id in added:
                names[role] = (added[token_id], f"added_tokens_decoder[{token_id}]")
            continue
        name = names[role][0]
        if added.get(token_id, name) != name:
            raise StentorError(f"{path}: {file} says {role}_token_id {token_id}, which tokenizer_config.json's "
                               f"added_tokens_decoder names {added[token_id]!r}, not the {role}_token {name!r}")  # fmt: skip
        added.setdefault(token_id, name)
    for role, (name, file) in names.items():
        if name not in added.values():
            raise StentorError(f"{path}: {file} names {role}_token {name!r}, but no file gives its id "
                               "(tokenizer_config.json added_tokens_decoder, or config.json *_token_id)")  # fmt: skip
    low = [i for i in added if i < base]
    if low:
        raise StentorError(f"{path}: added tokens at ids {low} overlap the {base} TokenMonster ids; this layout is not supported")
    if not any(r in names for r in ("bos", "eos")):
        raise StentorError(f"{path}: no bos_token or eos_token in special_tokens_map.json / tokenizer_config.json")
    return added, {role: names[role][0] if role in names else None for role in ROLES}


def load_foreign_tokenizer(path: str | Path, found=None, **kwargs):
    """A StentorTokenizer over the directory's vocabulary with the directory's own special-token ids
    (`found`: what `foreign_vocab` returned for it, so the vocabulary is not read again)."""
    from stentor.tokenizer.hf import StentorTokenizer

    path = Path(path)
    found = found or find_vocab(path)
    if found is None:
        raise StentorError(f"{path} has no TokenMonster vocabulary file")
    vocab_path, vocab = found
    added, roles = read_special_ids(path, vocab.id_table_size)
    config = _json(path / "tokenizer_config.json")
    adapter = (config.get("auto_map") or {}).get("AutoTokenizer") or config.get("tokenizer_class")
    log.info("%s: using stentor's native TokenMonster tokenizer on %s instead of the checkpoint's adapter (%s), "
             "which is not run", path, vocab_path.name, adapter)  # fmt: skip
    options = {f"{role}_token": name for role, name in roles.items() if name is not None}
    if config.get("chat_template"):
        options["chat_template"] = config["chat_template"]
    for flag in ("add_bos_token", "add_eos_token"):
        if isinstance(config.get(flag), bool):
            options[flag] = config[flag]
    return StentorTokenizer.from_vocab(vocab, special_ids=added, **{**options, **kwargs})


# Copied byte for byte; the adapter, its vocabulary and its tokenizer files are replaced by ours.
_KEEP = ("config.json", "generation_config.json", "model.safetensors.index.json", "README.md", "LICENSE")


def convert_checkpoint(src: str | Path, out: str | Path) -> Path:
    """Rewrite a foreign-TokenMonster checkpoint into stentor's self-contained layout: the same weights and
    special ids, with StentorTokenizer's module and vocabulary, loadable by plain transformers
    (`trust_remote_code=True`) with neither stentor nor tokenmonster installed."""
    import shutil

    from stentor.fileio import atomic_dir

    src = Path(src)
    if not src.is_dir():
        raise StentorError(f"{src} is not a directory; pass the checkpoint directory")
    found = foreign_vocab(src)
    if found is None:
        raise StentorError(f"{src} is not a checkpoint with a TokenMonster adapter (a tokenizer_config.json that is not "
                           "StentorTokenizer's and a .vocab file); nothing to convert")  # fmt: skip
    weights = sorted(src.glob("*.safetensors"))
    if not weights or not (src / "config.json").is_file():
        raise StentorError(f"{src} lacks config.json or .safetensors weights; re-download the checkpoint")
    tokenizer = load_foreign_tokenizer(src, found)
    with atomic_dir(out) as tmp:
        for f in [*weights, *(src / name for name in _KEEP)]:
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        tokenizer.save_pretrained(str(tmp))
    return Path(out)
