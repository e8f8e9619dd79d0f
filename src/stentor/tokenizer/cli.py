"""`stentor vocab ...`: inspect, use, build, train, download and convert TokenMonster vocabularies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stentor.errors import StentorError

VOCAB_HELP = "a .vocab file or an official name such as english-8000-strict-nocapcode-v1"


def _vocab(spec: str):
    from stentor.tokenizer.hub import open_vocab

    return open_vocab(spec)


def _printable(token: bytes) -> str:
    from stentor.tokenizer.tokenization_stentor import token_bytes_to_str

    return token_bytes_to_str(token)


def vocab_info(vocab) -> dict:
    """What `stentor vocab info` reports, as a JSON-able dict."""
    tokens = vocab.tokens()
    kinds = [0, 0, 0, 0]
    for info in tokens:
        kinds[info.type] += 1
    regular = sorted((t for t in tokens if t.type == 0), key=lambda t: -t.score)
    return {
        "file": vocab.name,
        "charset": vocab.charset_name,
        "capcode": vocab.capcode,
        "normalization": vocab.normalization_name,
        "mode": vocab.mode,
        "vocab_size": vocab.vocab_size,
        "id_table_size": vocab.id_table_size,
        "hf_vocab_size": _padded(vocab.id_table_size),
        "regular_tokens": kinds[0],
        "single_byte_tokens": kinds[1],
        "unk_id": vocab.unk_id,
        "delete_token_id": vocab.delete_token_id,
        "special_tokens": {str(i): _printable(vocab.id_to_token(i) or b"") for i in vocab.special_ids},
        "max_token_length": vocab.max_token_length,
        "sample_tokens": [_printable(t.token) for t in regular[:12]],
    }


def _padded(base: int) -> int:
    from stentor.model.presets import padded_vocab_size

    return padded_vocab_size(base)


def _info(args: argparse.Namespace) -> int:
    info = vocab_info(_vocab(args.vocab))
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    mode_names = {0: "unfiltered", 1: "clean", 2: "balanced", 3: "consistent", 4: "strict", 5: "built from YAML"}
    rows = [
        ("file", info["file"]),
        ("charset", info["charset"]),
        ("capcode", info["capcode"]),
        ("normalization", info["normalization"]),
        ("mode", f"{info['mode']} ({mode_names.get(info['mode'], '?')})"),
        ("vocab size (Len)", f"{info['vocab_size']:,}"),
        (
            "id table size",
            f"{info['id_table_size']:,} (HF tokenizer: {info['hf_vocab_size']:,} with </s>, <s>, padding)",
        ),
        ("tokens", f"{info['regular_tokens']:,} regular, {info['single_byte_tokens']} single-byte"),
        ("UNK id", "none" if info["unk_id"] is None else info["unk_id"]),
        ("delete token id", "none" if info["delete_token_id"] is None else info["delete_token_id"]),
        ("special tokens", ", ".join(f"{i}={t!r}" for i, t in info["special_tokens"].items()) or "none"),
        ("max token length", f"{info['max_token_length']} bytes"),
        ("top tokens", " | ".join(info["sample_tokens"])),
    ]
    for key, value in rows:
        print(f"{key:<18} {value}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read()
    if args.hf:
        from stentor.tokenizer.hf import tokenizer_from_vocab

        ids = tokenizer_from_vocab(args.vocab).encode(data.decode("utf-8", errors="surrogateescape"))
    else:
        ids = _vocab(args.vocab).encode(data)
    print(json.dumps(ids))
    return 0


def _decode(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read()
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StentorError(f"stdin is not JSON ({exc.msg}); pipe a JSON list of token ids, e.g. [1, 2, 3]") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise StentorError("stdin must be a JSON list of integer token ids, e.g. [1, 2, 3]")
    sys.stdout.buffer.write(_vocab(args.vocab).decode(ids))
    sys.stdout.buffer.flush()
    return 0


def _build(args: argparse.Namespace) -> int:
    from stentor.fileio import atomic_write_bytes
    from stentor.tokenizer import build_vocab_from_yaml
    from stentor.tokenizer.tokenmonster import VocabError

    try:
        source = args.tokens.read_text(encoding="utf-8")
    except OSError as exc:
        raise StentorError(f"cannot read {args.tokens}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StentorError(f"{args.tokens} is not UTF-8 text; a YAML token list is expected") from None
    try:
        vocab = build_vocab_from_yaml(source)
    except VocabError as exc:
        raise StentorError(f"{args.tokens}: {exc}") from None
    atomic_write_bytes(args.output, vocab.to_bytes())
    print(f"wrote {args.output}: {vocab.vocab_size:,} tokens, capcode {vocab.capcode}, {vocab.normalization_name}")
    return 0


def _export_yaml(args: argparse.Namespace) -> int:
    text = _vocab(args.vocab).export_yaml()
    if args.output is None:
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    else:
        from stentor.fileio import atomic_write_bytes

        atomic_write_bytes(args.output, text.encode("utf-8", "surrogateescape"))
    return 0


def _train(args: argparse.Namespace) -> int:
    from stentor.tokenizer.train import TrainConfig, train_vocab

    cfg = TrainConfig(
        vocab_size=args.size,
        mode=args.mode,
        capcode=args.capcode,
        normalization=args.normalization,
        single_bytes=args.single_bytes,
        max_token_length=args.max_token_length,
        min_occur=args.min_occur,
    )
    vocab = train_vocab(args.corpus, cfg, args.output)
    print(
        f"wrote {args.output}: {vocab.vocab_size:,} tokens "
        f"({cfg.mode}, capcode {cfg.capcode}, {vocab.normalization_name})"
    )
    return 0


def _get(args: argparse.Namespace) -> int:
    from stentor.tokenizer.hub import get_vocab

    print(get_vocab(args.name))
    return 0


def _hf(args: argparse.Namespace) -> int:
    from stentor.tokenizer.hf import save_tokenizer, tokenizer_from_vocab

    tokenizer = tokenizer_from_vocab(args.vocab, add_bos_token=not args.no_bos, add_eos_token=args.eos)
    save_tokenizer(tokenizer, args.output)
    print(
        f"wrote {args.output}: {len(tokenizer):,} ids (TokenMonster 0..{tokenizer.vocab_size - 1}, "
        f"</s>={tokenizer.eos_token_id}, <s>={tokenizer.bos_token_id}); "
        f"load with AutoTokenizer.from_pretrained(dir, trust_remote_code=True)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    vocab = sub.add_parser(
        "vocab",
        help="TokenMonster vocabularies: info, encode/decode, build, train, get, hf",
        description=(
            "Work with TokenMonster vocabularies, the tokenizer of Stentor2.\n"
            "VOCAB is a .vocab file or an official name (english-8000-strict-nocapcode-v1 is the card's);\n"
            "names are looked up in $STENTOR_VOCAB_DIR, then the Hugging Face cache, then downloaded.\n"
            "Examples:\n"
            "  stentor vocab get english-8000-strict-nocapcode-v1\n"
            "  echo 'Hello world' | stentor vocab encode --vocab english-8000-strict-nocapcode-v1\n"
            "  stentor vocab train corpus/*.txt --size 4000 -o my.vocab && stentor vocab hf my.vocab -o tok/"
        ),
        formatter_class=raw,
    )
    vsub = vocab.add_subparsers(dest="vocab_command", metavar="<subcommand>", required=True)

    p = vsub.add_parser("info", help="settings, sizes and sample tokens of a vocabulary")
    p.add_argument("vocab", metavar="VOCAB", help=VOCAB_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_info)

    p = vsub.add_parser(
        "encode",
        help="text on stdin -> JSON list of token ids on stdout",
        description="Encode stdin (raw bytes; invalid UTF-8 is fine) into a JSON list of token ids.\n"
        "Example: echo 'Hello world' | stentor vocab encode --vocab my.vocab",
        formatter_class=raw,
    )
    p.add_argument("--vocab", required=True, help=VOCAB_HELP)
    p.add_argument(
        "--hf", action="store_true", help="use the HF tokenizer: adds <s> and encodes <s>, </s> in text as specials"
    )
    p.set_defaults(func=_encode)

    p = vsub.add_parser(
        "decode",
        help="JSON list of ids on stdin -> raw bytes on stdout",
        description="Decode a JSON list of TokenMonster ids from stdin; the bytes are written unchanged\n"
        "(they may be invalid UTF-8).\n"
        "Example: echo '[98, 2688]' | stentor vocab decode --vocab my.vocab",
        formatter_class=raw,
    )
    p.add_argument("--vocab", required=True, help=VOCAB_HELP)
    p.set_defaults(func=_decode)

    p = vsub.add_parser(
        "build",
        help="build a .vocab from a YAML token list (upstream NewVocabFromYAML)",
        description="Build a vocabulary from a YAML token list in TokenMonster's format (charset, normalization,\n"
        "capcode, tokens/special/delete lists, include-*-bytes flags), exactly as the official implementation.",
        formatter_class=raw,
    )
    p.add_argument("tokens", type=Path, metavar="TOKENS.yaml")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .vocab file (written atomically)")
    p.set_defaults(func=_build)

    p = vsub.add_parser("export-yaml", help="a vocabulary as a YAML token list (upstream ExportYAML)")
    p.add_argument("vocab", metavar="VOCAB", help=VOCAB_HELP)
    p.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    p.set_defaults(func=_export_yaml)

    p = vsub.add_parser(
        "train",
        help="train a vocabulary offline from text files",
        description=(
            'Train a TokenMonster vocabulary from .txt files (one document each) and .jsonl files (a "text"\n'
            "field per line); globs are expanded. The corpus is normalized and capcoded like the final vocabulary,\n"
            "strict-mode candidates are counted, and the pool is pruned by tokenizing the corpus with real\n"
            "vocabularies until --size tokens remain (method: docs/tokenizer.md). ~2 MB and 4,000 tokens take\n"
            "well under a minute.\n"
            "Example: stentor vocab train 'data/*.txt' --size 4000 --mode strict --capcode 1 -o my.vocab"
        ),
        formatter_class=raw,
    )
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help=".txt/.jsonl files or globs")
    p.add_argument("--size", type=int, default=4000, help="vocabulary size incl. single bytes (default: %(default)s)")
    p.add_argument("--mode", default="strict", choices=["strict"], help="token filter mode (default: %(default)s)")
    p.add_argument(
        "--capcode",
        type=int,
        default=1,
        choices=[1, 2],
        help="1 = delete marker only, keeps case (the card's); 2 = full capcode",
    )
    p.add_argument("--normalization", default="nfd", help="TokenMonster normalization flags (default: %(default)s)")
    p.add_argument(
        "--single-bytes",
        default="utf8",
        choices=["ascii", "extended", "utf8", "256"],
        help="single bytes always kept; utf8 (default) makes every UTF-8 text encodable without loss",
    )
    p.add_argument(
        "--max-token-length", type=int, default=32, help="longest token in bytes, at most 40 (default: %(default)s)"
    )
    p.add_argument(
        "--min-occur", type=int, default=3, help="candidates rarer than this are ignored (default: %(default)s)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output .vocab file (written atomically)")
    p.set_defaults(func=_train)

    p = vsub.add_parser(
        "get",
        help="download an official prebuilt vocabulary into the HF cache",
        description="Download vocabs/NAME.vocab from the alasdairforsythe/tokenmonster hub repository into the\n"
        "Hugging Face cache and check that it loads; prints its path. Offline, download the file by hand and put\n"
        "it in $STENTOR_VOCAB_DIR, or pass --vocab PATH wherever a vocabulary is asked for.\n"
        "Example: stentor vocab get english-8000-strict-nocapcode-v1",
        formatter_class=raw,
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_get)

    p = vsub.add_parser(
        "hf",
        help="write a Hugging Face tokenizer directory for a vocabulary",
        description="Write a complete HF tokenizer directory: the vocabulary, tokenizer_config.json (auto_map),\n"
        "special tokens, the card's chat template and the tokenizer code, so that\n"
        "AutoTokenizer.from_pretrained(DIR, trust_remote_code=True) works without stentor installed.\n"
        "Ids: TokenMonster 0..V-1, </s> = V (also pad), <s> = V+1, reserved tokens up to a multiple of 128.\n"
        "Example: stentor vocab hf english-8000-strict-nocapcode-v1 -o runs/tokenizer",
        formatter_class=raw,
    )
    p.add_argument("vocab", metavar="VOCAB", help=VOCAB_HELP)
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory (replaced atomically)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend <s> when encoding")
    p.add_argument("--eos", action="store_true", help="append </s> when encoding")
    p.set_defaults(func=_hf)
